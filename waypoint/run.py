"""The waypoint process (``ambit-waypoint proxy``, one per waypoint pod).

Start-up: watch the namespace (``discovery``) -> the trust bundle (mounted) -> its own certificate
from the CA (a waypoint may obtain only its own identity) -> the tunnel listener on 15008 ->
ready on :15021. Metrics on :15020 (TCP, and the L7 engine's request metrics when wired in),
``/config_dump`` on localhost:15000. SIGTERM: not ready, stop accepting, give open connections
``drain_timeout`` seconds, then close them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from urllib.parse import urlsplit

from node_agent import admin, lifecycle
from node_agent.identity.client import HttpsCaClient
from node_agent.identity.manager import CertificateManager
from node_agent.metrics import MetricsObserver, TcpMetrics
from node_agent.proxy import model
from node_agent.proxy.listener import ProxyInputs
from node_agent.proxy.pump import Stream
from node_agent.proxy.records import ConnectionRegistry
from node_agent.proxy.sockets import HostSocketFactory
from node_agent.proxy.tls import TlsContexts
from node_agent.state.resolver import SnapshotResolver

from waypoint.discovery import Discovery
from waypoint.http_proxy import HttpProxy
from waypoint.metrics import RequestMetrics
from waypoint.model import RequestContext
from waypoint.routes import RouteTable
from waypoint.server import Request, SnapshotBackends, WaypointListener
from waypoint.settings import WaypointSettings

log = logging.getLogger(__name__)


class WaypointError(Exception):
    """the waypoint cannot start; the message says what to fix"""


class Waypoint:
    def __init__(self, settings: WaypointSettings, *, discovery: Discovery, pod_ip: str) -> None:
        self.settings = settings
        self.discovery = discovery
        self.pod_ip = pod_ip
        self.metrics = TcpMetrics()
        self.requests = RequestMetrics(self.metrics.registry)  # one /metrics page: TCP and HTTP
        self.http: HttpProxy | None = None
        self.registry = ConnectionRegistry()
        self.ready = False
        self.workload = model.Workload(
            uid=model.WorkloadUid(settings.pod_name), name=settings.pod_name, namespace=settings.namespace,
            service_account=settings.service_account, ips=(pod_ip,), node=os.environ.get("NODE_NAME", ""),
            workload_name=settings.gateway, trust_domain=settings.trust_domain, enrolled=False)

    def route_table(self) -> RouteTable:
        """``waypoint.model.RouteSource``: the routes of the current view."""
        return self.discovery.view.routes

    async def _serve_http(self, stream: Stream, request: Request) -> None:
        assert self.http is not None
        svc = request.service
        context = RequestContext(namespace=svc.namespace, service=svc.name, port=request.port,
                                 source_principal=request.source_principal, source_workload=request.source_workload,
                                 source_namespace=request.source_namespace, cluster_domain=self.settings.trust_domain)
        if request.protocol == "http2":
            await self.http.serve_http2(stream, context=context)
        else:
            await self.http.serve_http1(stream, context=context)

    async def config_dump(self) -> dict:
        view = self.discovery.view
        snap = view.snapshot
        return {
            "gateway": f"{self.settings.namespace}/{self.settings.gateway}",
            "identity": self.workload.identity.uri,
            "ready": self.ready,
            "snapshot_version": snap.version,
            "services": [{"name": s.name, "cluster_ip": s.cluster_ip, "waypoint": s.waypoint,
                          "ports": [{"port": p.port, "app_protocol": p.app_protocol} for p in s.ports],
                          "endpoints": [{"ip": e.ip, "ready": e.ready} for e in s.endpoints]}
                         for s in sorted(snap.services_by_name.values(), key=lambda x: x.name)],
            "http_routes": [r.get("metadata", {}).get("name") for r in view.http_routes],
            "http_route_errors": [str(e) for e in view.routes.errors],
            "certificates": self.certs.snapshot(),
            "connections": self.registry.dump(),
        }

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        threads_stop = threading.Event()
        self.discovery.start(threads_stop)
        runners: list = []
        listener: WaypointListener | None = None
        writer: asyncio.Task | None = None
        try:
            try:
                root_pem = s.identity.root_cert_path.read_text()
            except OSError as exc:
                raise WaypointError(f"cannot read the trust bundle at {s.identity.root_cert_path}: {exc.strerror}; "
                                    "the waypoint controller mounts it from the Gateway's trust-bundle ConfigMap") from exc
            ca_host = urlsplit(s.identity.ca_url).hostname
            ca = HttpsCaClient(url=s.identity.ca_url, token_path=s.identity.token_path, root_pem=root_pem,
                               timeout=s.identity.request_timeout,
                               resolve=lambda host: s.ca_ip if s.ca_ip and host == ca_host else None)
            self.certs = CertificateManager(ca=ca, settings=s.identity, trust_domain=s.trust_domain,
                                            trust_bundle_pem=root_pem)
            self.certs.ensure(self.workload.identity, holder="waypoint")
            runners = await admin.serve(s, dump=self.config_dump, debug={}, is_ready=lambda: self.ready,
                                        registry=self.metrics.registry)
            inputs = ProxyInputs(node_name=self.workload.node, resolver=SnapshotResolver(self.discovery.holder),
                                 sockets=HostSocketFactory(), tls=TlsContexts(certs=self.certs), settings=s.proxy,
                                 observer=MetricsObserver(self.metrics), registry=self.registry)
            while not self.discovery.synced:
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)
            self.discovery.rebuild()
            writer = asyncio.create_task(self.discovery.run_writer(), name="waypoint-snapshot-writer")
            while not stop.is_set():
                try:
                    await self.certs.wait_ready(self.workload.identity, timeout=5.0)
                    break
                except Exception as exc:  # the CA is unreachable or refused: say so and keep trying
                    log.warning("no certificate for %s yet: %s", self.workload.identity, exc)
            listener = WaypointListener(inputs=inputs, workload=self.workload, gateway=s.gateway,
                                        view=lambda: self.discovery.view, host="0.0.0.0", port=s.tunnel_port)
            backends = SnapshotBackends(listener)
            self.http = HttpProxy(connector=backends, backends=backends, routes=self, metrics=self.requests)
            listener.set_http(self._serve_http)
            await listener.start()
            self.ready = True
            log.info("waypoint %s/%s ready on :%d as %s", s.namespace, s.gateway, s.tunnel_port, self.workload.identity)
            await stop.wait()
        finally:
            self.ready = False
            threads_stop.set()
            if listener is not None:
                await listener.stop(drain=s.drain_timeout)
            if self.http is not None:
                self.http.close()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            if hasattr(self, "certs"):
                await self.certs.close()
            for runner in runners:
                await runner.cleanup()


def main(settings: WaypointSettings) -> int:
    pod_ip = os.environ.get("POD_IP", "")
    if not pod_ip:
        log.error("POD_IP is empty; the waypoint's Deployment sets it from the downward API (status.podIP)")
        return 2

    async def body(api, stop: asyncio.Event) -> None:
        discovery = Discovery(api_client=api, namespace=settings.namespace, trust_domain=settings.trust_domain)
        await Waypoint(settings, discovery=discovery, pod_ip=pod_ip).run(stop)

    return lifecycle.run(body, errors=(WaypointError,))
