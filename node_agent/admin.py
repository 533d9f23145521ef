"""The agent's HTTP endpoints, on three ports (ARCHITECTURE.md):

- admin, localhost:15000: ``/config_dump`` (the snapshot, certificates, redirection, connections:
  it shows the node's traffic, so never beyond localhost) and ``/healthz/ready``;
- metrics, :15020: ``/metrics`` in Prometheus' text format, and ``/debug/pods``: the pods this agent
  captured, each with its redirection state read live from its netns and its certificate's state
  and expiry (names and states only, as in the metrics; no addresses, keys or connections), for
  ``ambit check`` through the API server's pod proxy;
- health, :15021: ``/healthz/ready`` for the kubelet's readiness probe.

``serve`` starts them from what the agent hands in; ``config_dump`` builds the dump's body from a
snapshot and the live parts, with no I/O of its own.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from node_agent.state.snapshot import Snapshot


def pods_report(snap: Snapshot, *, ready: bool, certificates: list, redirection: list) -> dict:
    """``/debug/pods``: per captured pod its redirection state and its identity's certificate."""
    certs = {c["identity"]: {"state": c["state"], "not_after": c["not_after"]} for c in certificates}
    pods = [{"namespace": r.get("namespace"), "name": r.get("name"), "uid": r["uid"], "redirection": r["redirection"],
             "error": r.get("error"), "identity": r.get("identity"), "certificate": certs.get(r.get("identity"))}
            for r in redirection]
    return {"node": snap.node, "ready": ready, "pods": pods}


def config_dump(snap: Snapshot, *, ready: bool, certificates: list, redirection: list, connections: list) -> dict:
    return {
        "node": snap.node,
        "trust_domain": snap.trust_domain,
        "snapshot_version": snap.version,
        "ready": ready,
        "workloads": [
            {"uid": w.uid, "namespace": w.namespace, "pod": w.pod, "workload": w.workload, "ip": w.ip,
             "node": w.node, "service_account": w.service_account, "identity": w.identity,
             "enrolled": w.enrolled, "phase": w.phase}
            for w in sorted(snap.workloads_by_uid.values(), key=lambda x: (x.namespace, x.pod))
        ],
        "services": [
            {"name": s.name, "namespace": s.namespace, "cluster_ip": s.cluster_ip, "waypoint": s.waypoint,
             "ports": [{"port": p.port, "target_port": p.target_port, "name": p.name} for p in s.ports],
             "endpoints": [{"ip": e.ip, "ready": e.ready, "node": e.node, "ports": dict(e.ports)}
                           for e in s.endpoints]}
            for s in sorted(snap.services_by_name.values(), key=lambda x: (x.namespace, x.name))
        ],
        "certificates": certificates,
        "redirection": redirection,
        "connections": connections,
    }


class Ports(Protocol):
    """Where the endpoints listen (the agent's and the waypoint's settings both have these)."""

    admin_address: str
    admin_port: int
    metrics_address: str
    metrics_port: int
    health_port: int


async def serve(settings: Ports, *, dump: Callable[[], Awaitable[dict]], debug: dict[str, Callable[[], Awaitable[dict]]],
                is_ready: Callable[[], bool], registry: CollectorRegistry) -> list[web.AppRunner]:
    """Listen on the three ports (``debug``: JSON pages on the metrics port, by path); the caller
    cleans the runners up."""

    def json_page(produce: Callable[[], Awaitable[dict]]):
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(await produce(), dumps=functools.partial(json.dumps, indent=2, default=str))
        return handler

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ready(request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: waiting for the first list and reconcile\n")

    admin = web.Application()
    admin.router.add_get("/config_dump", json_page(dump))
    admin.router.add_get("/healthz/ready", ready)
    prom = web.Application()
    prom.router.add_get("/metrics", metrics)
    for path, produce in debug.items():
        prom.router.add_get(path, json_page(produce))
    health = web.Application()
    health.router.add_get("/healthz/ready", ready)
    runners: list[web.AppRunner] = []
    try:
        for app, host, port in ((admin, settings.admin_address, settings.admin_port),
                                (prom, settings.metrics_address, settings.metrics_port),
                                (health, settings.metrics_address, settings.health_port)):
            runner = web.AppRunner(app, access_log=None)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners
