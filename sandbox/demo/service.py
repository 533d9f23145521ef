"""What every demo service shares: a small JSON-over-HTTP/1.1 server and client, standard library only.

- ``Request``/``Response`` and a route table ``{(method, path): handler}``; unknown paths are 404,
  wrong methods 405, a handler's exception a 500 with the reason in JSON.
- ``serve(server)`` runs until SIGTERM/SIGINT, then stops accepting and lets requests finish.
- ``call(addr, path, method=...)`` is the client: one connection per call, a timeout, JSON back;
  ``UpstreamError`` when the peer cannot be reached or does not answer in JSON.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

Address = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.content_type == "application/json":
            return (json.dumps(self.body, ensure_ascii=False) + "\n").encode()
        return str(self.body).encode()


Handler = Callable[[Request], Response]
Routes = Mapping[tuple[str, str], Handler]


def error(status: int, message: str) -> Response:
    return Response(status, {"error": message})


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(routes: Routes, *, name: str, host: str = "0.0.0.0", port: int = 8080) -> DemoServer:
    """A server for ``routes``; ``port`` 0 picks a free one (``server.server_address``)."""
    log = logging.getLogger(f"sandbox.demo.{name}")

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real clients and the mesh expect
        server_version = f"ambit-demo-{name}"

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            route = routes.get((self.command, url.path))
            if route is None:
                allowed = sorted(m for m, p in routes if p == url.path)
                if allowed:
                    resp = error(405, f"{self.command} is not allowed on {url.path}; use {', '.join(allowed)}")
                    resp.headers["Allow"] = ", ".join(allowed)
                else:
                    resp = error(404, f"no such path {url.path}")
            else:
                try:
                    resp = route(Request(method=self.command, path=url.path, query=query, body=body))
                except Exception as exc:  # a bug in a handler must not kill the connection silently
                    log.exception("%s %s failed", self.command, url.path)
                    resp = error(500, f"{type(exc).__name__}: {exc}")
            data = resp.encode()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type + ("; charset=utf-8" if "json" in resp.content_type
                                                                  or "html" in resp.content_type else ""))
            self.send_header("Content-Length", str(len(data)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), fmt % args)

    return DemoServer((host, port), _Handler)


def listen_address(environ: Mapping[str, str]) -> tuple[str, int]:
    """``HOST`` (default 0.0.0.0) and ``PORT`` (default 8080)."""
    raw = environ.get("PORT", "8080")
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"error: PORT={raw!r} must be a port number, e.g. 8080") from None
    return environ.get("HOST", "0.0.0.0"), port


def serve(server: DemoServer, *, name: str) -> int:
    """Serve until SIGTERM/SIGINT (main thread only), then drain and close."""
    log = logging.getLogger(f"sandbox.demo.{name}")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"{name}-http")
    thread.start()
    host, port = server.server_address[:2]
    log.info("%s listening on %s:%d", name, host, port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        log.info("%s stopped", name)
    return 0


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- client -------------------------------------------------------------------------------------
class UpstreamError(Exception):
    """The upstream could not be reached, or its answer was not JSON."""


def call(addr: Address, path: str, *, method: str = "GET", timeout: float = 3.0) -> tuple[int, Any]:
    """One request to ``addr``; returns (status, decoded JSON body)."""
    host, port = addr
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Accept": "application/json", "Content-Length": "0"})
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException, socket.timeout) as exc:
        raise UpstreamError(f"{method} http://{host}:{port}{path}: {exc or type(exc).__name__}") from exc
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError as exc:
        raise UpstreamError(f"{method} http://{host}:{port}{path}: HTTP {resp.status} with a non-JSON body") from exc


def parse_address(raw: str, *, variable: str) -> Address:
    """``host:port`` (``[v6]:port`` too) from an environment variable."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{variable}={raw!r} must be host:port, e.g. 10.220.0.12:8080")
    return host.strip("[]"), int(port)
