"""The proxy's questions answered from the current snapshot: where does this connection go?

Reads ``holder.current`` once per question: no locks, no awaits (STYLE: frozen snapshots).
"""
from __future__ import annotations

from node_agent.proxy import model
from node_agent.state.snapshot import SnapshotHolder

WAYPOINT_PORT = 15008
"""a waypoint's tunnel listener (its Gateway's ``mesh`` listener, protocol HBONE)"""


class SnapshotResolver:
    """``node_agent.proxy.model.Resolver`` over a :class:`SnapshotHolder`.

    - a Service ClusterIP: its ready endpoints that are pods (enrolled or not; the proxy tunnels
      to enrolled ones and connects plainly to the others); no ready endpoint: an empty route
      (``NR``); endpoints that are not pods (e.g. the API server): passthrough to the ClusterIP
    - a Service bound to a waypoint (``ambit.dev/use-waypoint``): the waypoint's ready pods; none:
      an empty route that names the waypoint (fail closed, never around it)
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

    def waypoint_guard(self, ip: str, port: int) -> model.WaypointGuard | None:
        return self._holder.current.waypoint_guards.get((ip, port))

    def route(self, *, source: model.Workload, ip: str, port: int) -> model.MeshRoute | model.Passthrough:
        snap = self._holder.current
        svc = snap.services_by_vip.get(ip)
        if svc is not None:
            target = model.ServiceTarget(name=svc.name, namespace=svc.namespace,
                                         hostname=f"{svc.hostname}.{snap.trust_domain}", vip=ip, port=port)
            if svc.port(port) is None:
                return model.MeshRoute(endpoints=(), service=target)
            if svc.waypoint:
                return self._via_waypoint(svc.namespace, svc.waypoint, target)
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

    def _via_waypoint(self, namespace: str, name: str, target: model.ServiceTarget) -> model.MeshRoute:
        """The waypoint's ready pods, at their tunnel port; none (missing or not ready): an empty route."""
        snap = self._holder.current
        wp = snap.waypoints.get((namespace, name))
        endpoints: tuple[model.Endpoint, ...] = ()
        if wp is not None:
            endpoints = tuple(
                model.Endpoint(workload=snap.mesh_by_ip[ep.ip], port=WAYPOINT_PORT)
                for ep in wp.endpoints
                if ep.ready and ep.ip in snap.mesh_by_ip
            )
        return model.MeshRoute(endpoints=endpoints, service=target, waypoint=f"{namespace}/{name}")
