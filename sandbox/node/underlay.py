"""Host wiring of the sandbox: one bridge on the host, one network namespace per node.

```
host: bridge <name>0 10.2xx.0.1/24  (no forwarding, no NAT; return routes to pod CIDRs only)
  ├── veth <name>-n1 ── eth0 in netns <name>-node-1  10.2xx.0.11/24, ip_forward=1
  └── veth <name>-n2 ── eth0 in netns <name>-node-2  10.2xx.0.12/24
node i routes: pod CIDR of node j via node j's IP; the service CIDR via the host (so
locally-originated packets reach kube-proxy's OUTPUT rules); no default route anywhere.
```

The host routes each node's pod CIDR back via that node so pods can reach the API server on
the bridge address; they are attached to the bridge and disappear with it. ``teardown`` finds
everything by name (``<name>-*`` namespaces, ``<name>0`` and ``<name>-*`` links), so it works
after a crash or a killed ``up``.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess

from sandbox.config import SandboxConfig
from sandbox.node import netns
from sandbox.node.errors import NetnsError, UnderlayError

log = logging.getLogger(__name__)


def create_underlay(cfg: SandboxConfig) -> None:
    """The host bridge with the host's underlay address; idempotent."""
    link = _link(cfg.bridge)
    if link is not None and (link.get("linkinfo") or {}).get("info_kind") != "bridge":
        raise UnderlayError(f"link {cfg.bridge} exists but is not a bridge; "
                            f"remove it (ip link del {cfg.bridge}) or pick another AMBIT_SANDBOX name")
    if link is None:
        _ip("link", "add", cfg.bridge, "type", "bridge", what=f"create bridge {cfg.bridge}")
    # bridged frames must not traverse the host's iptables (br_netfilter), whatever its firewall says
    _ip("link", "set", cfg.bridge, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0",
        "nf_call_arptables", "0", what=f"disable netfilter calls on bridge {cfg.bridge}")
    _ip("addr", "replace", f"{cfg.host_ip}/{cfg.underlay.prefixlen}", "dev", cfg.bridge,
        what=f"address bridge {cfg.bridge}")
    _ip("link", "set", cfg.bridge, "up", what=f"bring up bridge {cfg.bridge}")


def create_node(cfg: SandboxConfig, i: int) -> None:
    """Node ``i``'s namespace, its uplink to the bridge, forwarding and routes; idempotent."""
    if not 1 <= i <= cfg.nodes:
        raise UnderlayError(f"node index {i} is outside 1..{cfg.nodes}")
    if _link(cfg.bridge) is None:
        raise UnderlayError(f"bridge {cfg.bridge} does not exist; call create_underlay first")
    node = cfg.node_name(i)
    ns = cfg.node_netns(node)
    veth = cfg.node_host_veth(i)
    try:
        netns.add(ns)
    except NetnsError as exc:
        raise UnderlayError(str(exc)) from exc
    if _link(veth) is None:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            what=f"create veth {veth} for {node}")
    _ip("link", "set", veth, "master", cfg.bridge, "up", what=f"attach {veth} to {cfg.bridge}")
    _ip("-n", ns, "addr", "replace", f"{cfg.node_ip(i)}/{cfg.underlay.prefixlen}", "dev", "eth0",
        what=f"address eth0 in {ns}")
    _ip("-n", ns, "link", "set", "eth0", "up", what=f"bring up eth0 in {ns}")
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    for j in range(1, cfg.nodes + 1):
        if j != i:
            _ip("-n", ns, "route", "replace", str(cfg.pod_cidr(j)), "via", cfg.node_ip(j), "dev", "eth0",
                what=f"route {cfg.pod_cidr(j)} in {ns}")
    _ip("-n", ns, "route", "replace", str(cfg.service_cidr), "via", cfg.host_ip, "dev", "eth0",
        what=f"route the service CIDR in {ns}")
    _ip("route", "replace", str(cfg.pod_cidr(i)), "via", cfg.node_ip(i), "dev", cfg.bridge,
        what=f"return route to {cfg.pod_cidr(i)} on the host")


def teardown(cfg: SandboxConfig) -> list[str]:
    """Remove every namespace and link of this sandbox, killing what runs inside; idempotent.

    Returns one line per thing removed (empty when there was nothing)."""
    removed: list[str] = []
    prefix = f"{cfg.name}-"
    names = netns.list_names(prefix)
    # one sweep over all namespaces: a kubelet restarting a container meanwhile is caught too
    for name, killed in netns.kill_many(names, grace=2.0).items():
        if killed:
            removed.append(f"{len(killed)} processes in netns {name}")
    for link in _links():
        if link == cfg.bridge or link.startswith(prefix):
            try:
                _ip("link", "delete", link, what=f"delete link {link}")
                removed.append(f"link {link}")
            except UnderlayError as exc:
                if _link(link) is not None:  # a veth vanishes with its peer's namespace
                    removed.append(f"link {link} (FAILED: {exc})")
    for name in names:
        try:
            if netns.delete(name):
                removed.append(f"netns {name}")
        except NetnsError as exc:
            log.warning("%s", exc)
            removed.append(f"netns {name} (FAILED: {exc})")
    nodes_dir = cfg.state_dir / "nodes"
    if nodes_dir.exists():
        shutil.rmtree(nodes_dir, ignore_errors=True)
        removed.append(str(nodes_dir))
    return removed


# ---- helpers -------------------------------------------------------------------------------
def _ip(*args: str, what: str) -> str:
    try:
        return netns.run(["ip", *args], what=what)
    except NetnsError as exc:
        raise UnderlayError(str(exc)) from exc


def _sysctl(ns: str, key: str, value: str) -> None:
    _run_in = [*netns.exec_argv(ns), "sysctl", "-qw", f"{key}={value}"]
    try:
        netns.run(_run_in, what=f"set {key}={value} in {ns}")
    except NetnsError as exc:
        raise UnderlayError(f"{exc}; is procps installed?") from exc


def _link(name: str) -> dict | None:
    proc = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def _links() -> list[str]:
    out = _ip("-j", "link", "show", what="list links")
    return [entry["ifname"] for entry in json.loads(out or "[]")]
