"""The proxy's questions answered from the current snapshot: where does this connection go?

Reads ``holder.current`` once per question: no locks, no awaits (STYLE: frozen snapshots).
"""
from __future__ import annotations

from node_agent.proxy import model
from node_agent.state.snapshot import SnapshotHolder


class SnapshotResolver:
    """``node_agent.proxy.model.Resolver`` over a :class:`SnapshotHolder`.

    - a Service ClusterIP: its ready endpoints that are pods (enrolled or not; the proxy tunnels
      to enrolled ones and connects plainly to the others); no ready endpoint: an empty route
      (``NR``); endpoints that are not pods (e.g. the API server): passthrough to the ClusterIP
    - a pod IP: that pod; an address outside the cluster: passthrough
    """

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder

    def service_address(self, host: str) -> str | None:
        """The ClusterIP of a Service named ``<name>.<ns>.svc`` (optionally ``.<cluster domain>``), else None."""
        parts = host.rstrip(".").split(".")
        if len(parts) < 3 or parts[2] != "svc":
            return None
        svc = self._holder.current.services_by_name.get((parts[1], parts[0]))
        if svc is None or svc.cluster_ip in ("", "None"):  # headless: no single address
            return None
        return svc.cluster_ip

    def workload_by_ip(self, ip: str) -> model.Workload | None:
        return self._holder.current.mesh_by_ip.get(ip)

    def route(self, *, source: model.Workload, ip: str, port: int) -> model.MeshRoute | model.Passthrough:
        snap = self._holder.current
        svc = snap.services_by_vip.get(ip)
        if svc is not None:
            target = model.ServiceTarget(name=svc.name, namespace=svc.namespace,
                                         hostname=f"{svc.hostname}.{snap.trust_domain}", vip=ip, port=port)
            if svc.port(port) is None:
                return model.MeshRoute(endpoints=(), service=target)
            targets = svc.targets(port)
            endpoints = tuple(
                model.Endpoint(workload=snap.mesh_by_ip[ep.ip], port=tport)
                for ep, tport in targets
                if ep.ip in snap.mesh_by_ip
            )
            if targets and not endpoints:
                return model.Passthrough(service=target)
            return model.MeshRoute(endpoints=endpoints, service=target)
        workload = snap.mesh_by_ip.get(ip)
        if workload is not None:
            return model.MeshRoute(endpoints=(model.Endpoint(workload=workload, port=port),))
        return model.Passthrough()
