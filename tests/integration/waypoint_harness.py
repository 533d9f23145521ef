"""What the waypoint engine's integration tests share: the engine behind loopback listeners, real backends.

``mesh()`` starts the engine (``HttpProxy.serve_http1`` or ``serve_http2`` per accepted connection,
chosen by the client's first bytes as the plumbing does), a few aiohttp backends on 127.0.0.1 (one
failing every other request, one sleeping 3 s, two counting hits, one always 503, one echoing) and
stops all of it, also when a test fails. Not a test module: the tests import it.
"""
from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import uvloop
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node_agent.proxy.errors import UpstreamError
from node_agent.proxy.model import Endpoint, Workload, WorkloadUid
from node_agent.proxy.pump import Stream
from waypoint.http_proxy import HttpProxy, HttpSettings
from waypoint.metrics import RequestMetrics
from waypoint.model import RequestContext, ServiceRef
from waypoint.routes import RouteTable

NS = "demo"
SOURCE = RequestContext(namespace=NS, service="", port=80, source_principal="spiffe://cluster.local/ns/demo/sa/client",
                        source_workload="client", source_namespace=NS)


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(120):
            await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


def route(name: str, service: str, rule: dict) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": service, "port": 80}], "rules": [rule]}}


ROUTES = [
    route("flaky", "flaky", {"backendRefs": [{"name": "flaky", "port": 80}],
                             "retry": {"attempts": 2, "codes": [503], "backoff": "1ms"}}),
    route("slow", "slow", {"backendRefs": [{"name": "slow", "port": 80}], "timeouts": {"request": "300ms"}}),
    route("split", "split", {"backendRefs": [{"name": "v1", "port": 80, "weight": 80},
                                             {"name": "v2", "port": 80, "weight": 20}]}),
    route("down", "down", {"backendRefs": [{"name": "down", "port": 80}],
                           "retry": {"attempts": 3, "codes": [503], "backoff": "1ms"}}),
]


class Backend:
    """One aiohttp server on 127.0.0.1 that counts the requests it receives."""

    def __init__(self, name: str, handler: Callable[[Backend, web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.name = name
        self.hits = 0
        self._handler = handler
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        return await self._handler(self, request)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def flaky(b: Backend, request: web.Request) -> web.Response:
    return web.Response(status=503 if b.hits % 2 else 200, text=f"{b.name} {b.hits}\n")


async def slow(b: Backend, request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.Response(text="slow\n")


async def hello(b: Backend, request: web.Request) -> web.Response:
    return web.Response(text=f"{b.name}\n")


async def unavailable(b: Backend, request: web.Request) -> web.Response:
    return web.Response(status=503, text="down\n")


async def echo(b: Backend, request: web.Request) -> web.StreamResponse:
    """The request body back, streamed; ``?size=N`` sends N bytes instead (a large download)."""
    if "size" in request.query:
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"z" * 65536
        while size:
            n = min(size, len(block))
            await resp.write(block[:n])
            size -= n
        await resp.write_eof()
        return resp
    data = await request.read()
    return web.Response(body=data, headers={"x-sha256": hashlib.sha256(data).hexdigest()})


class Backends:
    def __init__(self, services: dict[str, list[Backend]]) -> None:
        self._services = services
        self.app_protocols: dict[str, str] = {}  # service -> appProtocol; "http" when not listed

    def add(self, service: str, *, name: str, port: int, app_protocol: str = "http") -> None:
        """One more Service with one endpoint listening on 127.0.0.1:``port`` (a server a test runs)."""
        backend = Backend(name, hello)
        backend.port = port
        self._services[service] = [backend]
        self.app_protocols[service] = app_protocol

    def endpoints(self, service: ServiceRef) -> list[Endpoint] | None:
        backends = self._services.get(service.name)
        if backends is None or service.port != 80:
            return None
        return [Endpoint(workload=Workload(uid=WorkloadUid(f"uid-{b.name}"), name=f"{b.name}-pod", namespace=NS,
                                           service_account=b.name, ips=("127.0.0.1",), node="node-1",
                                           workload_name=b.name), port=b.port) for b in backends]

    def app_protocol(self, service: ServiceRef) -> str:
        return self.app_protocols.get(service.name, "http")


class Connector:
    async def connect(self, endpoint: Endpoint, *, service: ServiceRef) -> Stream:
        try:
            _, stream = await asyncio.get_running_loop().create_connection(Stream, endpoint.workload.ip, endpoint.port)
        except OSError as exc:
            raise UpstreamError(f"connection to {endpoint.workload.ip}:{endpoint.port} failed: {exc}") from exc
        return stream


class Routes:
    def __init__(self, table: RouteTable) -> None:
        self.table = table

    def route_table(self) -> RouteTable:
        return self.table


class Waypoint:
    """The engine behind a loopback listener; one task per connection, kept and cancelled at the end."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self.tasks: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.backends: Backends | None = None
        self.ports: dict[str, int] = {}

    async def listen(self, service: str) -> int:
        """A listener whose connections are for ``service`` (the plumbing learns it from the tunnel)."""
        loop = asyncio.get_running_loop()

        context = RequestContext(namespace=NS, service=service, port=80, source_principal=SOURCE.source_principal,
                                 source_workload="client", source_namespace=NS)

        async def serve(stream: Stream) -> None:
            # as the plumbing does: HTTP/2 when the client starts with the preface, else HTTP/1.1
            first = await stream.read_some()
            stream.unread(first)
            if first.startswith(b"PRI * HTTP/2.0"):
                await self.proxy.serve_http2(stream, context=context)
            else:
                await self.proxy.serve_http1(stream, context=context)

        def accepted(stream: Stream) -> None:
            task = loop.create_task(serve(stream), name=f"test-waypoint-{service}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        server = await loop.create_server(lambda: Stream(on_connected=accepted, paused=True), "127.0.0.1", 0)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.ports[service] = port
        return port

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        self.proxy.close()
        for server in self.servers:
            await server.wait_closed()

    def url(self, service: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"


@asynccontextmanager
async def mesh(settings: HttpSettings | None = None, *, routes: tuple[dict, ...] = ()):
    """The engine and the backends; ``routes`` are HTTPRoutes added to ``ROUTES`` (for a test's own Services)."""
    backends = {
        "flaky": [Backend("flaky", flaky)],
        "slow": [Backend("slow", slow)],
        "v1": [Backend("v1", hello)],
        "v2": [Backend("v2", hello)],
        "down": [Backend("down", unavailable)],
        "echo": [Backend("echo", echo)],
    }
    backends["split"] = []  # the route's parent: only its backends serve
    started: list[Backend] = []
    catalog = Backends(backends)
    wp = Waypoint(HttpProxy(connector=Connector(), backends=catalog, routes=Routes(RouteTable.build([*ROUTES, *routes])),
                            metrics=RequestMetrics(), settings=settings))
    wp.backends = catalog
    try:
        for group in backends.values():
            for b in group:
                await b.start()
                started.append(b)
        for service in ("flaky", "slow", "split", "down", "echo"):
            await wp.listen(service)
        yield wp, {b.name: b for b in started}
    finally:
        await wp.stop()
        for b in started:
            await b.stop()


async def curl(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    tool = shutil.which("curl")
    assert tool, "curl is not installed (make deps installs it; these tests never skip)"
    proc = await asyncio.create_subprocess_exec(tool, "-sS", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


async def codes(url: str, n: int) -> list[str]:
    """``n`` requests on keep-alive connections (one curl, many URLs): each one's status code."""
    rc, out, err = await curl("-w", "%{http_code}\n", *(["-o", "/dev/null", url] * n))
    assert rc == 0, err
    return out.split()


def samples(proxy: HttpProxy) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(proxy.metrics.registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


