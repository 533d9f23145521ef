"""``ambit node redirection|certs [--node N | POD]``: what one node's agent says about the pods it
captured (Istio's ``ztunnel-config``, plus redirection).

The CLI finds the node's agent itself (from ``--node``, or from a pod's ``spec.nodeName``) and reads
its ``/debug/pods`` (port 15020) through the API server's pod proxy, as ``ambit check`` does. Rows:

- redirection: NAMESPACE, POD, NODE, BACKEND, STATE (the rules read live from the pod's netns:
  ``captured`` when complete, else ``partial``/``absent``/``failed`` with the agent's reason)
- certs: NAMESPACE, POD, IDENTITY (SPIFFE ID), STATE, EXPIRES; ``-o wide`` adds NODE
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ambitctl import tables
from ambitctl.cluster import agents_by_node
from ambitctl.errors import AmbitctlError


@dataclass(frozen=True)
class Target:
    node: str
    pod: tuple[str, str] | None = None
    """(namespace, name): only that pod's rows"""


def resolve(cluster, *, node: str | None, pod_ref: str | None, namespace: str) -> Target:
    """``--node N`` or ``POD`` (``NAME`` in ``-n``'s namespace, or ``NS/NAME``) -> the node and filter."""
    if bool(node) == bool(pod_ref):
        raise AmbitctlError("name a node (--node node-1) or a pod (NAME, or NAMESPACE/NAME), not both or neither")
    if node:
        return Target(node=node)
    ns, sep, name = pod_ref.partition("/")
    if not sep:
        ns, name = namespace, pod_ref
    pod = cluster.get("v1", "Pod", name, ns)
    if pod is None:
        raise AmbitctlError(f"pod {ns}/{name} not found; list pods with `kubectl get pods -n {ns}`")
    where = pod["spec"].get("nodeName")
    if not where:
        raise AmbitctlError(f"pod {ns}/{name} is not scheduled to a node yet")
    return Target(node=where, pod=(ns, name))


def report(cluster, target: Target) -> dict:
    agent = agents_by_node(cluster).get(target.node)
    if agent is None:
        raise AmbitctlError(f"no Ambit node agent on node {target.node}; `ambit check` says why")
    doc = cluster.agent_pods(agent["metadata"]["name"])
    if target.pod:
        doc = {**doc, "pods": [p for p in doc.get("pods") or [] if (p.get("namespace"), p.get("name")) == target.pod]}
    return doc


def redirection_rows(doc: dict, *, node: str, backend: str = "iptables") -> list[dict]:
    rows = []
    for p in doc.get("pods") or []:
        state = {"installed": "captured"}.get(p["redirection"], p["redirection"])
        rows.append({"namespace": p.get("namespace") or "-", "pod": p.get("name") or p["uid"], "node": node,
                     "backend": backend, "state": state, "reason": p.get("error") or ""})
    return sorted(rows, key=lambda r: (r["namespace"], r["pod"]))


def cert_rows(doc: dict, *, node: str) -> list[dict]:
    rows = []
    for p in doc.get("pods") or []:
        cert = p.get("certificate") or {}
        rows.append({"namespace": p.get("namespace") or "-", "pod": p.get("name") or p["uid"], "node": node,
                     "identity": p.get("identity") or "-", "state": cert.get("state") or "missing",
                     "expires": cert.get("not_after") or "-"})
    return sorted(rows, key=lambda r: (r["namespace"], r["pod"]))


COLUMNS = {
    "redirection": (["namespace", "pod", "node", "backend", "state"], ["reason"]),
    "certs": (["namespace", "pod", "identity", "state", "expires"], ["node"]),
}


def render(rows: list[dict], *, what: str, output: str) -> str:
    if output == "json":
        return json.dumps(rows, indent=2)
    columns, wide = COLUMNS[what]
    names = columns + (wide if output == "wide" else [])
    return tables.render(names, ([row[n] for n in names] for row in rows))
