"""What the waypoint watches: Pods, Services, EndpointSlices and HTTPRoutes of its own namespace.

The node agent's reflectors (list, then watch; relist on 410) and its snapshot builder serve here
too: one writer task rebuilds a frozen ``node_agent.state.snapshot.Snapshot`` (plus the raw
HTTPRoutes) after changes; the proxy reads ``current`` without awaiting. The waypoint's RBAC is a
RoleBinding in its namespace (the controller makes it), so it lists namespaced only.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from kubernetes import client as k8s

from node_agent.discovery.reflector import Reflector
from node_agent.state.snapshot import Snapshot, SnapshotHolder, build

from waypoint.routes import RouteTable

log = logging.getLogger(__name__)

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"


@dataclass(frozen=True)
class WaypointView:
    """One consistent view: the namespace's snapshot, its HTTPRoutes (raw) and their route table."""

    snapshot: Snapshot
    http_routes: tuple[dict, ...] = field(default_factory=tuple)
    routes: RouteTable = field(default_factory=RouteTable)


class Discovery:
    def __init__(self, *, api_client: k8s.ApiClient, namespace: str, trust_domain: str, node: str = "") -> None:
        self.namespace = namespace
        self.trust_domain = trust_domain
        self._node = node
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._version = 0
        core = k8s.CoreV1Api(api_client)
        disc = k8s.DiscoveryV1Api(api_client)
        custom = k8s.CustomObjectsApi(api_client)
        ns = {"namespace": namespace}
        self.reflectors = {
            "pods": Reflector(name="pods", list_fn=core.list_namespaced_pod, list_kwargs=ns, on_event=self._on_event),
            "services": Reflector(name="services", list_fn=core.list_namespaced_service, list_kwargs=ns,
                                  on_event=self._on_event),
            "endpointslices": Reflector(name="endpointslices", list_fn=disc.list_namespaced_endpoint_slice,
                                        list_kwargs=ns, on_event=self._on_event),
            "httproutes": Reflector(name="httproutes", list_fn=custom.list_namespaced_custom_object,
                                    list_kwargs={"group": GATEWAY_GROUP, "version": GATEWAY_VERSION,
                                                 "namespace": namespace, "plural": "httproutes"},
                                    on_event=self._on_event),
        }
        self.holder = SnapshotHolder(Snapshot(node=node, trust_domain=trust_domain))
        self.view = WaypointView(snapshot=self.holder.current)

    def _on_event(self, etype: str, obj: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dirty.set)

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors.values())

    def rebuild(self) -> WaypointView:
        self._version += 1
        stores = {name: list(r.store.values()) for name, r in self.reflectors.items()}
        snap = build(node=self._node, trust_domain=self.trust_domain, namespaces=[], pods=stores["pods"],
                     services=stores["services"], endpoint_slices=stores["endpointslices"], version=self._version)
        self.holder.publish(snap)
        raw_routes = tuple(stores["httproutes"])
        routes = RouteTable.build(raw_routes)
        for error in routes.errors:
            log.warning("HTTPRoute ignored: %s", error)
        self.view = WaypointView(snapshot=snap, http_routes=raw_routes, routes=routes)
        return self.view

    def start(self, stop: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        for r in self.reflectors.values():
            r.start(stop)

    async def run_writer(self) -> None:
        """The one writer: rebuild after changes, debounced."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.02)
            self._dirty.clear()
            self.rebuild()
