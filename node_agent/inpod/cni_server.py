"""The agent's side of the CNI plugin's socket: one request, one answer, per connection.

The plugin connects to a unix socket (mode 0600: only root, as the runtime runs plugins),
sends one ``CniRequest`` frame (``cni.protocol``) and waits for one ``CniResponse``. This
server decodes the request, awaits the injected handler under ``request_timeout``, encodes
its answer, and closes. The handler decides: for ADD it answers ``enrolled`` only once the
pod's redirection and listeners are in place, ``not_enrolled`` for pods outside the mesh,
``error`` (with an actionable message for the runtime's event) otherwise.

``request_timeout`` should stay below the plugin's ``agentTimeoutSeconds`` (10 s by default)
so the runtime sees the agent's explanation rather than the plugin's own timeout. On timeout
the handler is cancelled: it must leave the pod fully set up or cleaned up.

The socket is bound under a temporary name, chmod'ed and renamed into place, so it is never
reachable with looser permissions; a stale socket from a previous agent is replaced, a live
one (another agent answering) is an error.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cni.errors import ProtocolError, UnsupportedProtocolVersion
from cni.protocol import (
    ERROR,
    HEADER_SIZE,
    CniRequest,
    CniResponse,
    decode_request,
    encode_response,
    frame_length,
)
from node_agent.inpod.errors import CniServerError

log = logging.getLogger(__name__)

CniHandler = Callable[[CniRequest], Awaitable[CniResponse]]
"""``async def handle(request: CniRequest) -> CniResponse``"""

DEFAULT_SOCKET_PATH = Path("/var/run/ambit/cni.sock")


class CniServer:
    """Serves the CNI plugin's requests on a unix socket until closed.

    ``async with CniServer(path=..., handler=...):`` or ``await start()`` / ``await close()``.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike = DEFAULT_SOCKET_PATH,
        handler: CniHandler,
        request_timeout: float = 8.0,
        read_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        if request_timeout <= 0 or read_timeout <= 0:
            raise ValueError("CniServer timeouts must be positive")
        self.path = Path(path)
        self._handler = handler
        self._request_timeout = request_timeout
        self._read_timeout = read_timeout
        self._close_timeout = close_timeout
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self._server is not None:
            raise CniServerError(f"BUG: the CNI server on {self.path} is already started")
        sock = _bind(self.path)
        try:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._inode = os.stat(self.path).st_ino
        log.info("serving the CNI plugin on %s", self.path)

    async def close(self) -> None:
        """Stop accepting, cancel requests in flight (their handlers get CancelledError), and
        remove the socket file if it is still ours."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self._close_timeout)
            if pending:
                log.error("%d CNI requests did not finish within %gs of cancellation", len(pending), self._close_timeout)
        await server.wait_closed()
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def __aenter__(self) -> "CniServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- one connection --------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await self._read_request(reader, writer)
            if request is not None:
                response = await self._answer(request)
                await self._write(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.warning("CNI request connection failed: %s", exc or type(exc).__name__)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> CniRequest | None:
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), self._read_timeout)
            body = await asyncio.wait_for(reader.readexactly(frame_length(header)), self._read_timeout)
            return decode_request(body)
        except UnsupportedProtocolVersion as exc:
            log.warning("CNI plugin speaks another protocol: %s", exc)
            message = f"{exc}; install the ambit-cni of this agent's release (the installer does)"
        except ProtocolError as exc:
            log.warning("malformed CNI request: %s", exc)
            message = f"malformed request: {exc}"
        await self._write(writer, CniResponse(ERROR, message))
        return None

    async def _answer(self, request: CniRequest) -> CniResponse:
        pod = f"{request.pod_namespace}/{request.pod_name}"
        started = time.monotonic()
        deadline = asyncio.timeout(self._request_timeout)
        try:
            async with deadline:
                response = await self._handler(request)
        except TimeoutError as exc:
            if not deadline.expired():  # the handler's own timeout, not ours
                log.exception("CNI %s for pod %s failed", request.command, pod)
                response = CniResponse(ERROR, f"{request.command} for pod {pod} failed in the agent: {exc or 'timed out'}")
            else:
                response = CniResponse(
                    ERROR, f"the agent did not finish {request.command} for pod {pod} within {self._request_timeout:g}s"
                )
        except Exception as exc:
            log.exception("CNI %s for pod %s failed", request.command, pod)
            response = CniResponse(ERROR, f"{request.command} for pod {pod} failed in the agent: {exc}")
        if not isinstance(response, CniResponse):
            log.error("BUG: the CNI handler returned %r, not a CniResponse", response)
            response = CniResponse(ERROR, f"BUG: the agent's CNI handler returned {type(response).__name__}")
        elapsed_ms = (time.monotonic() - started) * 1000
        level = logging.WARNING if response.status == ERROR else logging.INFO
        log.log(
            level,
            "CNI %s pod %s container %s: %s%s (%.0f ms)",
            request.command,
            pod,
            request.container_id[:12],
            response.status,
            f": {response.message}" if response.message else "",
            elapsed_ms,
        )
        return response

    async def _write(self, writer: asyncio.StreamWriter, response: CniResponse) -> None:
        try:
            data = encode_response(response)
        except ProtocolError:  # an oversized message: keep the start, it says what went wrong
            data = encode_response(CniResponse(response.status, response.message[:4000] + "..."))
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self._read_timeout)


def _bind(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600, replacing a stale one atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _refuse_live_socket(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(tmp))
        os.chmod(tmp, 0o600)
        sock.listen(128)
        os.replace(tmp, path)
    except OSError as exc:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise CniServerError(f"cannot serve the CNI plugin on {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _refuse_live_socket(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise CniServerError(f"{path} exists and is not a socket; remove it or choose another CNI socket path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return  # stale: nobody listens; we replace it
    finally:
        probe.close()
    raise CniServerError(f"another process already serves {path}; is a second node agent running on this node?")
