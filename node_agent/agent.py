"""The node agent process: discovery -> snapshots -> pod captures -> proxies, plus admin endpoints.

Start-up order (readiness is reported only at the end):
1. reflectors for Namespaces, Pods, Services, EndpointSlices (list, then watch);
2. the trust bundle (a mounted file, else the ``ambit-trust-bundle`` ConfigMap) and the
   certificate manager;
3. first complete list -> first snapshot -> reconcile: pods enrolled earlier are found again
   (CNI records, then a scan by IP) and captured before we say ready;
4. the CNI socket; the endpoints (``admin``: localhost:15000, metrics :15020, health :15021) are up
   from step 2 on, reporting not ready until here.
Afterwards one task is the only writer: every change marks the state dirty; the writer rebuilds
the snapshot, publishes it, and reconciles captures (enrol/unenrol live, no pod restarts).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from kubernetes import client as k8s

from cni.protocol import CniRequest, CniResponse
from node_agent import admin, lifecycle
from node_agent.discovery.reflector import Reflector
from node_agent.identity.client import HttpsCaClient
from node_agent.identity.manager import CertificateManager
from node_agent.inpod import redirect_iptables
from node_agent.inpod.cni_server import CniServer
from node_agent.inpod.errors import InpodError
from node_agent.inpod.netns import NetnsWorker
from node_agent.inpod.pods import PodCaptures, PodRecord, PodRecords, find_netns_by_ip
from node_agent.inpod.sockets import InpodSocketFactory
from node_agent.metrics import MetricsObserver, TcpMetrics
from node_agent.proxy import model
from node_agent.proxy.listener import ProxyInputs
from node_agent.proxy.records import ConnectionRegistry
from node_agent.proxy.tls import TlsContexts
from node_agent.settings import AgentSettings
from node_agent.state.resolver import SnapshotResolver
from node_agent.state.snapshot import Snapshot, SnapshotHolder, Workload, build

log = logging.getLogger(__name__)

TRUST_BUNDLE_CONFIGMAP = "ambit-trust-bundle"
_LIVE_PHASES = ("Pending", "Running")


class AgentError(Exception):
    """the agent cannot start; the message says what to fix"""


def mesh_workload(w: Workload, ips: tuple[str, ...], trust_domain: str) -> model.Workload:
    return model.Workload(uid=model.WorkloadUid(w.uid), name=w.pod, namespace=w.namespace,
                          service_account=w.service_account, ips=ips, node=w.node, workload_name=w.workload,
                          trust_domain=trust_domain, enrolled=True)


class Agent:
    def __init__(self, settings: AgentSettings, *, api_client: k8s.ApiClient) -> None:
        self.settings = settings
        self._api = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.holder = SnapshotHolder(Snapshot(node=settings.node_name, trust_domain=settings.trust_domain))
        self.ready = False
        self.started = time.time()
        discovery = k8s.DiscoveryV1Api(api_client)
        self.reflectors = {
            "namespaces": Reflector(name="namespaces", list_fn=self._core.list_namespace, on_event=self._on_event),
            "pods": Reflector(name="pods", list_fn=self._core.list_pod_for_all_namespaces, on_event=self._on_event),
            "services": Reflector(name="services", list_fn=self._core.list_service_for_all_namespaces,
                                  on_event=self._on_event),
            "endpointslices": Reflector(name="endpointslices",
                                        list_fn=discovery.list_endpoint_slice_for_all_namespaces,
                                        on_event=self._on_event),
        }
        self.metrics = TcpMetrics()
        self.registry = ConnectionRegistry()
        self.records = PodRecords(settings.state_dir)
        self._version = 0

    # ---- discovery ------------------------------------------------------------------------
    def _on_event(self, etype: str, obj: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dirty.set)

    def _rebuild(self) -> Snapshot:
        self._version += 1
        stores = {name: list(r.store.values()) for name, r in self.reflectors.items()}
        snap = build(node=self.settings.node_name, trust_domain=self.settings.trust_domain,
                     namespaces=stores["namespaces"], pods=stores["pods"], services=stores["services"],
                     endpoint_slices=stores["endpointslices"], version=self._version)
        self.holder.publish(snap)
        return snap

    async def _trust_bundle(self, stop: asyncio.Event) -> str:
        path = self.settings.identity.agent.root_cert_path
        delay = 0.5
        while not stop.is_set():
            if path.exists():
                return path.read_text()
            try:
                cm = await asyncio.to_thread(self._core.read_namespaced_config_map, TRUST_BUNDLE_CONFIGMAP,
                                             self.settings.namespace)
                pem = (cm.data or {}).get("root-cert.pem")
                if pem:
                    return pem
                reason = "it has no root-cert.pem"
            except k8s.ApiException as exc:
                reason = f"HTTP {exc.status} {exc.reason}"
            except Exception as exc:  # API unreachable
                reason = str(exc)
            log.warning("waiting for the trust bundle (%s not mounted, ConfigMap %s/%s: %s); is the CA running?",
                        path, self.settings.namespace, TRUST_BUNDLE_CONFIGMAP, reason)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 10)
        raise asyncio.CancelledError()

    # ---- CNI ------------------------------------------------------------------------------
    async def _wait_for_pod(self, req: CniRequest) -> Workload | None:
        deadline = time.monotonic() + self.settings.cni_wait_for_pod
        while True:
            snap = self.holder.current
            w = snap.workloads_by_uid.get(req.pod_uid) if req.pod_uid else next(
                (x for x in snap.workloads_by_uid.values()
                 if x.namespace == req.pod_namespace and x.pod == req.pod_name), None)
            if w is not None:
                return w
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def on_cni(self, req: CniRequest) -> CniResponse:
        if req.command == "DEL":
            uid = req.pod_uid or next((r.uid for r in self.records.all()
                                       if r.namespace == req.pod_namespace and r.name == req.pod_name), "")
            if uid:
                self.records.delete(uid)
                await self.captures.release(uid)
            return CniResponse("not_enrolled", "released")
        if req.command == "CHECK":
            captured = req.pod_uid in self.captures.captured
            return CniResponse("enrolled" if captured else "not_enrolled", "")
        w = await self._wait_for_pod(req)
        if w is None:
            return CniResponse("error", f"pod {req.pod_namespace}/{req.pod_name} is not known to the agent on "
                                        f"{self.settings.node_name} yet (is its API watch healthy?); retry")
        self.records.put(PodRecord(uid=w.uid, namespace=w.namespace, name=w.pod, netns=req.netns, ips=req.ips))
        if not w.enrolled:
            return CniResponse("not_enrolled", "")
        if not req.ips:
            return CniResponse("error", f"pod {w.namespace}/{w.pod} has no IP in the CNI result; "
                                        "is ambit-cni chained after the IPAM plugin?")
        mw = mesh_workload(w, tuple(req.ips), self.settings.trust_domain)
        try:
            await self.captures.capture(mw, req.netns, fresh=True)
        except InpodError as exc:
            return CniResponse("error", str(exc))
        # the probe SNAT follows on the next reconcile (the pod's status update triggers one): until
        # then a kubelet probe is merely proxied through 15006 to the app, so it need not delay the ack
        await self._cert_ready(mw)
        return CniResponse("enrolled", f"captured with identity {mw.identity}")

    async def _cert_ready(self, w: model.Workload) -> None:
        """Give the CA a moment so the pod's first connection finds a certificate (not required)."""
        try:
            await self.certs.wait_ready(w.identity, timeout=3.0)
        except Exception as exc:
            log.warning("certificate for %s not ready yet: %s", w.identity, exc)

    # ---- reconcile ------------------------------------------------------------------------
    async def reconcile(self, snap: Snapshot, *, initial: bool = False) -> None:
        desired = {w.uid: w for w in snap.enrolled_local() if w.phase in _LIVE_PHASES}
        for uid in list(self.captures.captured):
            if uid not in desired:
                await self.captures.release(uid)
        for rec in self.records.all():
            if rec.uid not in snap.workloads_by_uid:
                self.records.delete(rec.uid)  # the pod is gone (deleted while we were away)
            elif initial and rec.uid not in desired and os.path.exists(rec.netns):
                # unenrolled while the agent was down: its rules would black-hole it; take them out
                try:
                    if await asyncio.to_thread(redirect_iptables.remove, rec.netns):
                        log.info("removed stale redirection of %s/%s (no longer enrolled)", rec.namespace, rec.name)
                except InpodError as exc:
                    log.warning("removing stale redirection of %s/%s: %s", rec.namespace, rec.name, exc)
        for uid, w in desired.items():
            if uid in self.captures.captured:
                continue
            rec = self.records.get(uid)
            ips = (w.ip,) if w.ip else (rec.ips if rec else ())
            if not ips:
                continue  # not started yet: the CNI ADD will capture it
            netns = rec.netns if rec and rec.netns else None
            if netns is None or not os.path.exists(netns):
                netns = await asyncio.to_thread(find_netns_by_ip, ips[0])
                if netns is None:
                    log.warning("pod %s/%s (%s) is enrolled but its network namespace was not found on this node",
                                w.namespace, w.pod, ips[0])
                    continue
                self.records.put(PodRecord(uid=uid, namespace=w.namespace, name=w.pod, netns=netns, ips=ips))
            try:
                await self.captures.capture(mesh_workload(w, ips, self.settings.trust_domain), netns)
            except InpodError as exc:
                log.error("%s", exc)
        await self._sync_probe_snat()

    async def _sync_probe_snat(self) -> None:
        try:
            await asyncio.to_thread(redirect_iptables.sync_probe_snat, self.captures.captured_ips())
        except InpodError as exc:
            log.error("kubelet probe SNAT on the node: %s", exc)

    async def _writer(self, stop: asyncio.Event) -> None:
        """The one writer: rebuild and reconcile after changes, debounced."""
        while not stop.is_set():
            await self._dirty.wait()
            await asyncio.sleep(0.02)
            self._dirty.clear()
            snap = self._rebuild()
            try:
                await self.reconcile(snap)
            except Exception:
                log.exception("reconcile failed; retrying on the next change")

    # ---- admin ----------------------------------------------------------------------------
    async def pods_report(self) -> dict:
        redirection = await asyncio.to_thread(self.captures.dump)
        return admin.pods_report(self.holder.current, ready=self.ready, certificates=self.certs.snapshot(),
                                 redirection=redirection)

    async def config_dump(self) -> dict:
        redirection = await asyncio.to_thread(self.captures.dump)
        return admin.config_dump(self.holder.current, ready=self.ready, certificates=self.certs.snapshot(),
                                 redirection=redirection, connections=self.registry.dump())

    # ---- run ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        threads_stop = threading.Event()  # the reflectors are threads
        for r in self.reflectors.values():
            r.start(threads_stop)
        runners: list = []  # admin.serve's, cleaned up on the way out
        worker = NetnsWorker()
        cni_server = None
        writer = None
        try:
            root_pem = await self._trust_bundle(stop)
            s = self.settings
            services = SnapshotResolver(self.holder)
            ca = HttpsCaClient(url=s.identity.agent.ca_url, token_path=s.identity.agent.token_path,
                               root_pem=root_pem, timeout=s.identity.agent.request_timeout,
                               resolve=services.service_address)
            self.certs = CertificateManager(ca=ca, settings=s.identity.agent, trust_domain=s.trust_domain,
                                            trust_bundle_pem=root_pem)
            self.sockets = InpodSocketFactory(worker)
            inputs = ProxyInputs(node_name=s.node_name, resolver=services, sockets=self.sockets,
                                 tls=TlsContexts(certs=self.certs), settings=s.proxy,
                                 observer=MetricsObserver(self.metrics), registry=self.registry)
            self.captures = PodCaptures(inputs=inputs, worker=worker, sockets=self.sockets, records=self.records,
                                        certs=self.certs)
            runners = await admin.serve(s, dump=self.config_dump, debug={"/debug/pods": self.pods_report},
                                        is_ready=lambda: self.ready,
                                        registry=self.metrics.registry)
            while not all(r.synced.is_set() for r in self.reflectors.values()):
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)
            snap = self._rebuild()
            await self.reconcile(snap, initial=True)
            cni_server = CniServer(path=s.cni_socket, handler=self.on_cni)
            await cni_server.start()
            writer = asyncio.create_task(self._writer(stop), name="snapshot-writer")
            writer.add_done_callback(_log_exit)
            self.ready = True
            log.info("node agent ready on %s: %d pods captured, %d workloads known", s.node_name,
                     len(self.captures.captured), len(snap.workloads_by_uid))
            await stop.wait()
        finally:
            self.ready = False
            threads_stop.set()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            if cni_server is not None:
                await cni_server.close()
            if hasattr(self, "captures"):
                await self.captures.release_all()
            if hasattr(self, "certs"):
                await self.certs.close()
            for runner in runners:
                await runner.cleanup()
            worker.close()


def _log_exit(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s exited: %r", task.get_name(), exc)


def _raise_fd_limit() -> None:
    """Three listeners per captured pod plus pooled upstream sockets: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(settings: AgentSettings) -> int:
    _raise_fd_limit()

    async def body(api: k8s.ApiClient, stop: asyncio.Event) -> None:
        await Agent(settings, api_client=api).run(stop)

    return lifecycle.run(body, errors=(AgentError,))
