"""The one byte pump: every proxied connection is two ``Stream``s joined by ``relay``.

- ``Stream`` is an asyncio ``BufferedProtocol`` over one TCP socket, optionally with TLS 1.3 run
  by this module through ``ssl.MemoryBIO`` (not the event loop's SSL transport): that gives TLS
  half-close (close_notify as EOF, RFC 8446 6.1), no per-connection 256 KiB SSL read buffer, and
  avoids uvloop's leaking TLS client path (PERF-NOTES).
- Before ``relay`` a stream is in *preamble* mode: the tunnel header and the server's answer are
  read with ``read_some`` and written with ``write``; at most ``PREAMBLE_LIMIT`` bytes are held,
  then reading pauses. A caller that keeps writing in this mode (the waypoint's HTTP engine)
  awaits ``drain`` for backpressure: it returns once the transport is below its low-water mark.
- ``relay(client, server)`` forwards both directions at once. Reads land in one process-wide read
  buffer and are written to the peer's transport straight from it; if the transport could not
  send everything at once it keeps a reference, so the shared buffer is replaced (PERF-NOTES).
- Backpressure: when a destination transport passes its high-water mark (``pause_writing``) its
  source stops reading until ``resume_writing``; per direction at most about one read buffer plus
  the high-water mark is held in user space.
- EOF on one side half-closes the other (TCP ``write_eof`` or TLS close_notify) while the other
  direction keeps flowing; a side is closed once both its directions are done. A reset or broken
  pipe ends the connection as a normal close; a TLS error or a TCP FIN without close_notify
  (truncation) aborts both sides.
"""
from __future__ import annotations

import asyncio
import enum
import errno
import ssl
import time
from collections.abc import Callable
from typing import Protocol
from dataclasses import dataclass

from node_agent.proxy.errors import ProxyError

READ_BUFFER_SIZE = 256 * 1024
"""Size of the shared read buffers; below 64 KiB reads cost throughput (PERF-NOTES)."""
WRITE_HIGH_WATER = 64 * 1024
"""Bytes a transport may buffer before its source stops reading."""
WRITE_LOW_WATER = 16 * 1024
PREAMBLE_LIMIT = 64 * 1024
"""Bytes held per stream before ``relay`` starts; reading pauses beyond it."""

_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _RawTls(Protocol):
    """What the relay calls per chunk: ``ssl.SSLObject``'s C object (``_ssl._SSLSocket``) has it."""

    def read(self, size: int, buffer: memoryview) -> int: ...

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def pending(self) -> int: ...


class StreamClosedError(ProxyError, ConnectionError):
    """The connection ended (EOF, reset, TLS failure) while the proxy was still setting it up."""


class _Buffers:
    """The process-wide read buffers: one for plaintext, one for TLS ciphertext."""

    __slots__ = ("plain", "cipher")

    def __init__(self) -> None:
        self.plain = memoryview(bytearray(READ_BUFFER_SIZE))
        self.cipher = memoryview(bytearray(READ_BUFFER_SIZE))

    def retire_plain(self) -> None:
        """A transport kept a view of ``plain``: give the next reads a fresh buffer."""
        self.plain = memoryview(bytearray(READ_BUFFER_SIZE))


_BUFFERS = _Buffers()

# Why a stream is not reading (bits); it reads only when none is set.
_PAUSE_PEER = 1  # the peer's transport is above its high-water mark
_PAUSE_PREAMBLE = 2  # preamble buffer full, or the caller asked not to read yet


class PumpEnd(str, enum.Enum):
    """How a relayed connection ended."""

    COMPLETE = "complete"  # both directions ended with EOF
    RESET = "reset"  # a side reset or closed without EOF; the other side was closed normally
    ERROR = "error"  # TLS failure or truncated TLS stream; both sides aborted
    ABORTED = "aborted"  # the proxy cancelled the connection (shutdown, drain deadline)
    FAILED = "failed"  # never relayed: setup failed before the pump started


@dataclass(slots=True)
class PumpResult:
    """Bytes each way, how long, and how it ended. ``from_client`` flows client -> server."""

    from_client: int = 0
    from_server: int = 0
    duration: float = 0.0
    end: PumpEnd = PumpEnd.FAILED
    error: str | None = None


class _Relay:
    __slots__ = ("done", "end", "error", "lost")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.end = PumpEnd.COMPLETE
        self.error: str | None = None
        self.lost = 0

    def note(self, end: PumpEnd, error: str | None) -> None:
        """Record the first abnormal ending (later ones are consequences)."""
        if self.end is PumpEnd.COMPLETE:
            self.end = end
            self.error = error


class Stream(asyncio.BufferedProtocol):
    """One side of a proxied connection (see the module docstring)."""

    __slots__ = (
        "transport",
        "received",
        "_peer",
        "_relay",
        "_pre",
        "_paused",
        "_waiter",
        "_eof_in",
        "_eof_out",
        "_lost",
        "_error",
        "_tls",
        "_sslobj",
        "_bio_in",
        "_bio_out",
        "_handshaking",
        "_on_connected",
        "_write_paused",
        "_drain_waiter",
    )

    def __init__(self, *, on_connected: Callable[[Stream], None] | None = None, paused: bool = False) -> None:
        """``on_connected`` runs in ``connection_made`` (listeners start their handler there);
        ``paused`` keeps the socket unread until ``relay`` or ``read_some`` (no buffering meanwhile)."""
        self.transport: asyncio.Transport | None = None
        self.received = 0  # plaintext bytes received from this side and handed to the peer
        self._peer: Stream | None = None
        self._relay: _Relay | None = None
        self._pre = bytearray()
        self._paused = _PAUSE_PREAMBLE if paused else 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof_in = False  # the remote end finished sending (FIN or close_notify)
        self._eof_out = False  # we finished sending (write_eof or close_notify)
        self._lost = False
        self._error: BaseException | None = None
        self._tls: ssl.SSLObject | None = None
        self._sslobj: _RawTls | None = None  # the C object behind ``_tls``: one Python call less per chunk
        self._bio_in: ssl.MemoryBIO | None = None
        self._bio_out: ssl.MemoryBIO | None = None
        self._handshaking = False
        self._on_connected = on_connected
        self._write_paused = False  # the transport is above its high-water mark (``drain`` waits)
        self._drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        if self._paused:
            transport.pause_reading()
            # uvloop starts reading after connection_made returns, whatever it was told inside.
            asyncio.get_running_loop().call_soon(self._reapply_pause)
        if self._on_connected is not None:
            callback, self._on_connected = self._on_connected, None
            callback(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFERS.cipher if self._tls is not None else _BUFFERS.plain

    def _reapply_pause(self) -> None:
        if self._paused and not self._lost and self.transport is not None:
            self.transport.pause_reading()

    def buffer_updated(self, nbytes: int) -> None:
        if self._paused:  # a read that raced a pause (or uvloop ignoring one): stop for real now
            self._reapply_pause()
        if self._tls is None:
            self._deliver(_BUFFERS.plain[:nbytes])
            return
        assert self._bio_in is not None
        self._bio_in.write(_BUFFERS.cipher[:nbytes])
        if self._handshaking:
            self._do_handshake()
        else:
            self._drain_tls()

    def eof_received(self) -> bool:
        if self._tls is not None and not self._eof_in:
            if self._handshaking:
                self._fail(StreamClosedError("peer closed the connection during the tls handshake"))
            else:
                self._fail(StreamClosedError("tls peer closed the tcp connection without close_notify (truncated)"))
            return True
        self._on_eof()
        return True  # keep our sending direction open: half-close

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._peer is not None:
            self._peer._pause(_PAUSE_PEER)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()
        if self._peer is not None:
            self._peer._resume(_PAUSE_PEER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()
        self._wake_drain()
        relay = self._relay
        if relay is None:
            if exc is not None and self._error is None:
                self._error = exc
            return
        if not (self._eof_in and self._eof_out):
            if exc is None or isinstance(exc, _RESET_ERRORS):
                relay.note(PumpEnd.RESET, _describe(exc) if exc else "closed before both directions ended")
            else:
                relay.note(PumpEnd.ERROR, _describe(exc))
        peer = self._peer
        if peer is not None and not peer._lost and peer.transport is not None:
            peer.transport.close()  # nothing more can flow to or from us; the peer flushes and closes
        relay.lost += 1
        if relay.lost == 2 and not relay.done.done():
            relay.done.set_result(None)

    # ------------------------------------------------------------------ reading

    def _pause(self, why: int) -> None:
        was = self._paused
        self._paused |= why
        if not was and self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def _resume(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        if self._paused or self._lost or self.transport is None:
            return
        self.transport.resume_reading()
        if self._tls is not None and not self._handshaking:
            # Plaintext may be waiting inside the TLS object; not from inside a transport callback.
            asyncio.get_running_loop().call_soon(self._drain_tls)

    def _deliver(self, data: memoryview) -> None:
        """Hand plaintext from this side on: to the peer when relaying, else to the preamble."""
        self.received += len(data)
        peer = self._peer
        if peer is not None:
            peer._send(data, shared=True)
            return
        self._pre += data
        if len(self._pre) >= PREAMBLE_LIMIT:
            self._pause(_PAUSE_PREAMBLE)
        self._wake()

    def _on_eof(self) -> None:
        if self._eof_in:
            return
        self._eof_in = True
        if self._relay is None:
            self._wake()
            return
        assert self._peer is not None
        self._peer._send_eof()
        self._maybe_close()

    def _fail(self, exc: BaseException) -> None:
        """A protocol-level failure on this side: abort the whole connection."""
        if self._relay is None:
            if self._error is None:
                self._error = exc
            self._wake()
            if self.transport is not None:
                self.transport.abort()
            return
        self._relay.note(PumpEnd.ERROR, _describe(exc))
        for side in (self, self._peer):
            if side is not None and side.transport is not None and not side._lost:
                side.transport.abort()

    # ------------------------------------------------------------------ writing

    def _send(self, data: bytes | bytearray | memoryview, *, shared: bool = False) -> None:
        transport = self.transport
        if self._lost or transport is None or transport.is_closing():
            return  # the relay is ending; the data has nowhere to go
        sslobj = self._sslobj
        if sslobj is not None:
            try:
                sslobj.write(data)
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            transport.write(self._bio_out.read())  # type: ignore[union-attr]  # set with _sslobj
            return
        transport.write(data)
        if shared and transport.get_write_buffer_size():
            _BUFFERS.retire_plain()

    def _send_eof(self) -> None:
        if self._eof_out or self._lost or self.transport is None:
            return
        self._eof_out = True
        if self._tls is not None:
            try:
                self._tls.unwrap()  # queues close_notify; reading continues (TLS 1.3 half-close)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            self._flush_tls()
        elif self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._eof_in and self._eof_out and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # ------------------------------------------------------------------ TLS

    def _flush_tls(self) -> None:
        bio = self._bio_out
        if bio is not None and bio.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bio.read())

    def _do_handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush_tls()  # the alert, so the peer learns why
            self._handshaking = False
            if self._error is None:
                self._error = exc
            self._wake()
            return
        self._flush_tls()
        self._handshaking = False
        self._wake()
        self._drain_tls()  # application data may have come with the last flight

    def _drain_tls(self) -> None:
        """Decrypt what has arrived into the shared buffer and deliver it, while not paused."""
        tls = self._sslobj
        if tls is None or self._lost or self._handshaking:
            return
        bio_in = self._bio_in
        assert bio_in is not None
        while not self._paused and not self._eof_in:
            view = _BUFFERS.plain
            size = len(view)
            got = 0
            eof = False
            try:
                while got < size:
                    n = tls.read(size - got, view[got:] if got else view)
                    if not n:
                        eof = True
                        break
                    got += n
                    if not bio_in.pending and not tls.pending():
                        break  # all decrypted: asking again would only raise SSLWantReadError
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                eof = True
            except ssl.SSLError as exc:
                if got:
                    self._deliver(view[:got])
                self._flush_tls()
                self._fail(exc)
                return
            if got:
                self._deliver(view[:got])
            if eof:
                self._flush_tls()
                self._on_eof()
                break
            if got < size:
                break
        if self._bio_out.pending:  # type: ignore[union-attr]  # key updates and other post-handshake replies
            self._flush_tls()

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        session: ssl.SSLSession | None = None,
        timeout: float,
    ) -> ssl.SSLObject:
        """Run the TLS handshake on this stream; raise ``ssl.SSLError``/``StreamClosedError``/``TimeoutError``."""
        if self._tls is not None or self._relay is not None:
            raise ProxyError("BUG: start_tls on a stream that already has TLS or is relaying")
        self._bio_in = ssl.MemoryBIO()
        self._bio_out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._bio_in, self._bio_out, server_side=server_side, session=session)
        self._sslobj = getattr(self._tls, "_sslobj", self._tls)
        self._handshaking = True
        if self._pre:  # ciphertext that arrived before TLS was started
            self._bio_in.write(bytes(self._pre))
            self._pre.clear()
        self._resume(_PAUSE_PREAMBLE)
        self._do_handshake()
        async with asyncio.timeout(timeout):
            while self._handshaking:
                self._check_alive(during="the tls handshake")
                await self._wait()
        self._check_alive(during="the tls handshake")
        return self._tls

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._tls

    # ------------------------------------------------------------------ preamble

    async def read_some(self) -> bytes:
        """Bytes received so far (waiting for some); ``b""`` at EOF. Only before ``relay``."""
        self._resume(_PAUSE_PREAMBLE)
        while not self._pre:
            if self._eof_in:
                return b""
            self._check_alive(during="setup")
            await self._wait()
        data = bytes(self._pre)
        self._pre.clear()
        return data

    def take_buffered(self) -> bytes:
        """What ``read_some`` would return now, without waiting (``b""`` when nothing is held).

        For a caller that must look at an idle stream synchronously (a pooled HTTP/2 connection
        handling the frames its server sent while it was idle)."""
        data = bytes(self._pre)
        self._pre.clear()
        if data:
            self._resume(_PAUSE_PREAMBLE)
        return data

    def unread(self, data: bytes) -> None:
        """Put back bytes that follow a header; they are relayed first."""
        if data:
            self._pre[:0] = data

    def write(self, data: bytes) -> None:
        """Send bytes (through TLS when started) before ``relay``."""
        self._send(data)

    async def drain(self) -> None:
        """Wait until what ``write`` queued is below the low-water mark (at once when it is).

        Raises ``StreamClosedError`` when the connection is gone, so a writer stops producing.
        Its own waiter: one task may ``drain`` while another waits in ``read_some``."""
        while True:
            self._check_alive(during="writing")
            if not self._write_paused:
                return
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def at_eof(self) -> bool:
        """The remote end finished sending (FIN or close_notify); what it sent may still be buffered."""
        return self._eof_in

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken with ``read_some`` (preamble mode)."""
        return len(self._pre)

    def _check_alive(self, *, during: str) -> None:
        if self._error is not None:
            raise StreamClosedError(f"connection failed during {during}: {_describe(self._error)}") from self._error
        if self._lost:
            raise StreamClosedError(f"connection closed during {during}")
        if self._eof_in and self._handshaking:
            raise StreamClosedError(f"peer closed the connection during {during}")

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ ending

    @property
    def is_lost(self) -> bool:
        return self._lost

    def close(self) -> None:
        """Close gracefully (pending bytes are flushed; TLS gets a close_notify)."""
        if self.transport is None or self._lost:
            return
        if self._tls is not None and not self._eof_out and not self._handshaking:
            self._eof_out = True
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass
            self._flush_tls()
        self.transport.close()

    def abort(self) -> None:
        """Close at once (RST); pending bytes are dropped."""
        if self.transport is not None and not self._lost:
            self.transport.abort()

    async def wait_closed(self, timeout: float) -> None:
        """Wait until the transport is gone (after ``close``); abort after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self._lost:
                    await self._wait()
        except TimeoutError:
            self.abort()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, ssl.SSLError):
        return f"tls error: {exc.reason or exc}".lower()
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}".lower()
    return str(exc) or type(exc).__name__


class Pump:
    """Joins two streams; ``run`` forwards until both are closed, ``result`` reports at any time."""

    __slots__ = ("client", "server", "_state", "_started", "_client_before", "_server_before")

    def __init__(self, client: Stream, server: Stream) -> None:
        if client._relay is not None or server._relay is not None:
            raise ProxyError("BUG: a stream can be relayed only once")
        self.client = client
        self.server = server
        self._state = _Relay(asyncio.get_running_loop().create_future())
        self._started = time.monotonic()
        # bytes read during setup (headers) are not relayed; what is still buffered will be
        self._client_before = client.received - len(client._pre)
        self._server_before = server.received - len(server._pre)

    def result(self) -> PumpResult:
        return PumpResult(
            from_client=self.client.received - self._client_before,
            from_server=self.server.received - self._server_before,
            duration=time.monotonic() - self._started,
            end=self._state.end,
            error=self._state.error,
        )

    async def run(self) -> PumpResult:
        """Relay until both sides are closed. Cancelling aborts both sides and re-raises."""
        client, server, state = self.client, self.server, self._state
        for side, peer in ((client, server), (server, client)):
            side._relay = state
            side._peer = peer
        for side, peer in ((client, server), (server, client)):
            if side._error is not None:
                side._fail(side._error)
            if side._lost:
                state.note(PumpEnd.RESET, "closed before the relay started")
                state.lost += 1
                if not peer._lost and peer.transport is not None:
                    peer.transport.close()
        if state.lost < 2:
            for side, peer in ((client, server), (server, client)):
                if side._pre:
                    pending, side._pre = bytes(side._pre), bytearray()
                    peer._send(pending)
                if side._eof_in and not side._lost:
                    peer._send_eof()
                    side._maybe_close()
            for side in (client, server):
                side._resume(_PAUSE_PREAMBLE)
        if state.lost == 2 and not state.done.done():
            state.done.set_result(None)
        try:
            await state.done
        except asyncio.CancelledError:
            state.note(PumpEnd.ABORTED, "cancelled")
            client.abort()
            server.abort()
            raise
        return self.result()


async def relay(client: Stream, server: Stream) -> PumpResult:
    """Forward bytes both ways until both sides are closed; the one pump every path uses.

    Bytes already read during setup and put back (``unread``) are forwarded first.
    """
    return await Pump(client, server).run()
