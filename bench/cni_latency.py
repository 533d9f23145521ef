"""CNI ADD latency: the installed ``ambit-cni`` run directly, as the kubelet's CNI runtime runs it.

For each sample we pick a running pod the agent knows, take what the runtime recorded for it (the
CNI cache entry: container id, netns, ``CNI_ARGS`` and the chain's result, which is the
``prevResult`` ambit-cni receives), build the plugin's stdin from its entry in the node's conflist,
and time the plugin process from exec to exit. It runs from the host, as on a real node (no
``nsenter`` into the sandbox node's filesystem, which the sandbox's CNI runtime adds); the
conflist's ``agentSocket`` is a path of the node's filesystem, so it is given as the host reaches
it (``NodeFs.path``: ``/proc/<holder>/root/run/ambit/cni.sock``).

- enrolled pods: a DEL first (untimed: the agent releases the pod and removes its rules, so the
  netns is as fresh as at pod start), then the timed ADD: the agent's whole first-ADD path (find
  the pod, record it, open the three listeners, certificate ready, install the rules, answer);
- other pods: the timed ADD only (the agent answers "not enrolled").

Each enrolled pod is cycled once per sample; the pods are idle ``sleep`` pods, so the moment
without capture between DEL and ADD hurts nobody.
"""
from __future__ import annotations

import json
import time

from bench.procs import Children, ToolError
from bench.topology import Pod, Topology
from cni.spec import DEFAULT_AGENT_SOCKET
from sandbox.node.nodefs import NodeFs


def _cache_entries(topo: Topology, node: str) -> dict[str, dict]:
    """pod uid -> the runtime's cache entry for its eth0."""
    out = {}
    cache = topo.cfg.node_dir(node) / "cni" / "cache" / "results"
    for path in cache.glob("*-eth0"):
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        args = dict(entry.get("cniArgs") or [])
        if args.get("K8S_POD_UID"):
            out[args["K8S_POD_UID"]] = entry
    return out


def _plugin_conf(topo: Topology, node: str) -> tuple[dict, str]:
    conflist = json.loads(next((topo.cfg.cni_conf_dir(node)).glob("*.conflist")).read_text())
    plugin = next((p for p in conflist["plugins"] if p.get("type") == "ambit-cni"), None)
    if plugin is None:
        raise ToolError(f"ambit-cni is not chained in {topo.cfg.cni_conf_dir(node)}")
    # a path on the node: the host reaches it through the node's filesystem
    socket = plugin.get("agentSocket", DEFAULT_AGENT_SOCKET)
    plugin = {**plugin, "agentSocket": NodeFs(topo.cfg, node).path(socket)}
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}, conflist["name"]


def time_adds(children: Children, topo: Topology, pods: list[Pod], *, samples: int,
              delete_first: bool) -> tuple[list[float], list[str]]:
    """Wall-clock milliseconds of ``samples`` ADDs spread over ``pods`` (each after an untimed DEL if
    ``delete_first``); and the errors seen."""
    entries: dict[str, dict] = {}
    confs: dict[str, dict] = {}
    for node in {p.node for p in pods}:
        entries.update(_cache_entries(topo, node))
        confs[node], _ = _plugin_conf(topo, node)
    usable = [p for p in pods if p.uid in entries]
    if not usable:
        raise ToolError("no CNI cache entries found for the pods to time")
    times: list[float] = []
    errors: list[str] = []
    for i in range(samples):
        pod = usable[i % len(usable)]
        entry = entries[pod.uid]
        stdin = json.dumps({**confs[pod.node], "prevResult": entry["result"]}).encode()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD",
               "CNI_CONTAINERID": entry["containerId"], "CNI_NETNS": entry["netns"],
               "CNI_IFNAME": entry.get("ifName", "eth0"),
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in entry["cniArgs"]),
               "CNI_PATH": f"{topo.cfg.cni_bin_dir(pod.node)}:/usr/lib/cni"}
        plugin = str(topo.cfg.cni_bin_dir(pod.node) / "ambit-cni")
        if delete_first:
            rc, out, err = children.run([plugin], input=stdin, env={**env, "CNI_COMMAND": "DEL"}, timeout=30)
            if rc != 0:
                errors.append(f"{pod.namespace}/{pod.name}: DEL exit {rc}: {(out or err).strip()[:200]}")
        started = time.perf_counter()
        rc, out, err = children.run([plugin], input=stdin, env=env, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        if rc != 0:
            errors.append(f"{pod.namespace}/{pod.name}: exit {rc}: {(out or err).strip()[:200]}")
            continue
        times.append(elapsed)
    return times, errors

