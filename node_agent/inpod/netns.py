"""Making sockets inside pod network namespaces without moving the event loop's thread.

``setns(2)`` switches the network namespace of the calling *thread* only. A socket belongs for
its whole life to the namespace it was created in, whatever thread later uses it. So:

- ``PodNetns`` holds an open fd on the namespace (``/run/netns/<name>``, ``/proc/<pid>/ns/net``)
  so it cannot vanish while we hold it, and identifies it by inode;
- ``NetnsWorker`` is one dedicated thread that, per queued job, enters a namespace, runs a short
  function (create, configure, bind a socket), and returns to its own namespace; ``await
  worker.run(...)`` from asyncio; if it ever fails to return, it stops for good rather than
  make sockets in the wrong place;
- ``listen_in_netns`` / ``connect_socket_in_netns`` make the agent's listeners (15001, 15006,
  15008) and its outgoing sockets; connect/accept then happen on the event loop as usual.

``os.setns`` arrives in Python 3.12; this calls libc's ``setns`` through ctypes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import fcntl
import functools
import os
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from node_agent.inpod.errors import NetnsError
from node_agent.inpod.sockopt import (
    IP_BIND_ADDRESS_NO_PORT,
    IP_TRANSPARENT,
    IPV6_TRANSPARENT,
    PROXY_MARK,
    SO_MARK,
)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd (Linux 4.11+): its CLONE_NEW* type
_NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class PodNetns:
    """An open handle on a network namespace. Close it (or use ``with``) when done."""

    __slots__ = ("path", "fd", "inode")

    def __init__(self, *, path: str, fd: int, inode: int) -> None:
        self.path = path
        self.fd = fd
        self.inode = inode

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PodNetns":
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsError(f"network namespace {path} does not exist (was the pod deleted?)") from None
        except OSError as exc:
            raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from exc
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            os.close(fd)
            raise NetnsError(f"{path} is not a network namespace (expected /run/netns/<name> or /proc/<pid>/ns/net)")
        return cls(path=path, fd=fd, inode=os.fstat(fd).st_ino)

    @classmethod
    def by_name(cls, name: str) -> "PodNetns":
        """A namespace made by ``ip netns add`` (or a CNI runtime) under /run/netns."""
        if "/" in name or name in ("", ".", ".."):
            raise NetnsError(f"{name!r} is not a network namespace name")
        return cls.open(_NETNS_RUN_DIR / name)

    @classmethod
    def of_pid(cls, pid: int) -> "PodNetns":
        return cls.open(f"/proc/{pid}/ns/net")

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> "PodNetns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PodNetns({self.path!r}, inode={self.inode}{', closed' if self.closed else ''})"


# ---- the worker ----------------------------------------------------------------------------
_Job = tuple[PodNetns, Callable[..., Any], tuple, concurrent.futures.Future]


class NetnsWorker:
    """One thread that runs short functions inside network namespaces, one job at a time.

    Jobs must be quick and must not block (create/configure/bind a socket): they run while
    the thread sits in the pod's namespace, and every other job waits for them.
    """

    def __init__(self, *, name: str = "ambit-netns") -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._broken: str = ""
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, ns: PodNetns, fn: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        """Queue ``fn(*args)`` to run inside ``ns``; its result or exception lands in the future."""
        if self._broken:
            raise NetnsError(self._broken)
        if self._closed:
            raise NetnsError("BUG: the netns worker is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((ns, fn, args, future))
        return future

    def call(self, ns: PodNetns, fn: Callable[..., T], *args: Any, timeout: float | None = 10.0) -> T:
        """Run ``fn(*args)`` inside ``ns`` and wait for it (from any thread but the worker's)."""
        return self.submit(ns, fn, *args).result(timeout)

    async def run(self, ns: PodNetns, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` inside ``ns`` without blocking the event loop.

        If the awaiting task is cancelled, a socket the job still produces is closed.
        """
        future = self.submit(ns, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_orphan)
            raise

    async def listen(
        self,
        ns: PodNetns,
        *,
        host: str,
        port: int,
        mark: int | None = PROXY_MARK,
        transparent: bool = False,
        reuse: bool = True,
        backlog: int = 1024,
    ) -> socket.socket:
        """``listen_in_netns`` on this worker, awaitable."""
        job = functools.partial(
            _make_listener, ns, host=host, port=port, mark=mark, transparent=transparent, reuse=reuse, backlog=backlog
        )
        return await self.run(ns, job)

    async def connect_socket(
        self,
        ns: PodNetns,
        *,
        family: socket.AddressFamily | int = socket.AF_INET,
        mark: int | None = PROXY_MARK,
        bind_ip: str | None = None,
    ) -> socket.socket:
        """``connect_socket_in_netns`` on this worker, awaitable."""
        return await self.run(ns, functools.partial(_make_connector, ns, family=family, mark=mark, bind_ip=bind_ip))

    async def connect_sockets(
        self,
        ns: PodNetns,
        *,
        count: int,
        family: socket.AddressFamily | int = socket.AF_INET,
        mark: int | None = PROXY_MARK,
    ) -> list[socket.socket]:
        """``count`` unbound connector sockets made in one job: a pool's refill, one thread hop."""

        def make() -> list[socket.socket]:
            made: list[socket.socket] = []
            try:
                for _ in range(count):
                    made.append(_make_connector(ns, family=family, mark=mark, bind_ip=None))
            except BaseException:
                for sock in made:
                    sock.close()
                raise
            return made

        return await self.run(ns, make)

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued jobs and stop the thread."""
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def __enter__(self) -> "NetnsWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while (job := self._queue.get()) is not None:
                if not _run_job(job, home):
                    self._broken = (
                        "BUG: the netns worker could not return to its own network namespace and "
                        "stopped; restart the agent"
                    )
                    break
        finally:
            os.close(home)
            while True:  # fail whatever is still queued rather than leave callers waiting
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job[3].set_running_or_notify_cancel():
                    job[3].set_exception(NetnsError(self._broken or "the netns worker was closed"))


def _run_job(job: _Job, home: int) -> bool:
    """Run one job in its namespace; False if the thread could not get back home."""
    ns, fn, args, future = job
    if not future.set_running_or_notify_cancel():
        return True
    try:
        setns(ns.fd)
    except OSError as exc:
        future.set_exception(NetnsError(f"cannot enter network namespace {ns.path}: {exc.strerror}"))
        return True
    try:
        result, error = fn(*args), None
    except BaseException as exc:  # delivered to the caller, whatever it is
        result, error = None, exc
    try:
        setns(home)
    except OSError:
        if isinstance(result, socket.socket):
            result.close()
        future.set_exception(NetnsError("BUG: the netns worker could not return to its own network namespace"))
        return False
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return True


def _close_orphan(future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        result = future.result()
        for sock in result if isinstance(result, list) else [result]:
            if isinstance(sock, socket.socket):
                sock.close()


def _in_fresh_thread(ns: PodNetns, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` inside ``ns`` on a short-lived thread (it exits inside ``ns``: no way back needed)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            setns(ns.fd)
        except OSError as exc:
            future.set_exception(NetnsError(f"cannot enter network namespace {ns.path}: {exc.strerror}"))
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    thread = threading.Thread(target=target, name="ambit-netns-once", daemon=True)
    thread.start()
    thread.join()
    return future.result()


# ---- sockets -------------------------------------------------------------------------------
def listen_in_netns(
    ns: PodNetns,
    *,
    host: str,
    port: int,
    mark: int | None = PROXY_MARK,
    transparent: bool = False,
    reuse: bool = True,
    backlog: int = 1024,
    worker: NetnsWorker | None = None,
) -> socket.socket:
    """A TCP socket bound to ``host:port`` inside ``ns``, listening, non-blocking, with SO_MARK
    ``mark`` (None: unmarked). Blocks the calling thread briefly; from a coroutine use
    ``await worker.listen(ns, host=..., port=...)``."""
    job = functools.partial(
        _make_listener, ns, host=host, port=port, mark=mark, transparent=transparent, reuse=reuse, backlog=backlog
    )
    if worker is not None:
        return worker.call(ns, job)
    return _in_fresh_thread(ns, job)


def connect_socket_in_netns(
    ns: PodNetns,
    *,
    family: socket.AddressFamily | int = socket.AF_INET,
    mark: int | None = PROXY_MARK,
    bind_ip: str | None = None,
    worker: NetnsWorker | None = None,
) -> socket.socket:
    """An unconnected, non-blocking TCP socket made inside ``ns`` with SO_MARK ``mark``,
    optionally bound to ``bind_ip`` (e.g. the pod's IP) with a port chosen at connect time.
    Connect it anywhere, e.g. ``await loop.sock_connect(sock, addr)``: it routes in ``ns``."""
    job = functools.partial(_make_connector, ns, family=family, mark=mark, bind_ip=bind_ip)
    if worker is not None:
        return worker.call(ns, job)
    return _in_fresh_thread(ns, job)


def _make_listener(
    ns: PodNetns, *, host: str, port: int, mark: int | None, transparent: bool, reuse: bool, backlog: int
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.SOL_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise NetnsError(f"cannot listen on {_hostport(host, port)} in {ns.path}: {exc.strerror or exc}") from exc
    return sock


def _make_connector(ns: PodNetns, *, family: socket.AddressFamily | int, mark: int | None, bind_ip: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if bind_ip is not None:
            # pick the source port at connect(), per destination: no ephemeral-port exhaustion
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((bind_ip, 0))
    except OSError as exc:
        sock.close()
        where = f" bound to {bind_ip}" if bind_ip else ""
        raise NetnsError(f"cannot make a socket{where} in {ns.path}: {exc.strerror or exc}") from exc
    return sock


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
