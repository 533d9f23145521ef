"""ClusterIP routing inside a node's network namespace, as kube-proxy's iptables mode does it.

```
nat    PREROUTING, OUTPUT -> AMBIT-SERVICES: -d <clusterIP> -p <proto> --dport <port> -> AMBIT-SVC-<hash>
       AMBIT-SVC-<hash>: one rule per ready endpoint, "-m statistic --mode random --probability 1/(n-i)"
                         (plus "-m recent" stickiness for sessionAffinity: ClientIP) -> AMBIT-SEP-<hash>
       AMBIT-SEP-<hash>: hairpin (source is the endpoint) -> AMBIT-MARK-MASQ; DNAT --to-destination ip:port
       POSTROUTING -> AMBIT-POSTROUTING: MASQUERADE what AMBIT-MARK-MASQ marked (0x4000)
filter INPUT, FORWARD, OUTPUT (ctstate NEW) -> AMBIT-SERVICES: a clusterIP port without ready
       endpoints -> REJECT --reject-with icmp-port-unreachable (clients see "connection refused")
```
``render_rules`` is pure: Services + EndpointSlices (raw JSON) -> ``iptables-restore`` input.
``KubeProxy`` applies it with ``iptables-restore --noflush`` (only Ambit's chains are rewritten,
atomically per table; chains of removed services are flushed and deleted) and keeps the hook
rules in the built-in chains present. One writer: syncs are debounced and run on one thread.
Not implemented: NodePort, LoadBalancer, externalIPs, topology, terminating-endpoint fallback.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from sandbox.node.errors import KubeProxyError

log = logging.getLogger(__name__)

SERVICES_CHAIN = "AMBIT-SERVICES"
POSTROUTING_CHAIN = "AMBIT-POSTROUTING"
MARK_MASQ_CHAIN = "AMBIT-MARK-MASQ"
SVC_PREFIX = "AMBIT-SVC-"
SEP_PREFIX = "AMBIT-SEP-"
MASQ_MARK = "0x4000"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_AFFINITY_SECONDS = 10800

# (table, built-in chain, match, target): the jumps into Ambit's chains
HOOKS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("nat", "PREROUTING", (), SERVICES_CHAIN),
    ("nat", "OUTPUT", (), SERVICES_CHAIN),
    ("nat", "POSTROUTING", (), POSTROUTING_CHAIN),
    ("filter", "INPUT", ("-m", "conntrack", "--ctstate", "NEW"), SERVICES_CHAIN),
    ("filter", "FORWARD", ("-m", "conntrack", "--ctstate", "NEW"), SERVICES_CHAIN),
    ("filter", "OUTPUT", ("-m", "conntrack", "--ctstate", "NEW"), SERVICES_CHAIN),
)
HOOK_COMMENT = "ambit kube-proxy service portals"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    service: str
    port_name: str
    protocol: str
    """lowercase: tcp, udp, sctp"""
    cluster_ip: str
    port: int
    affinity_seconds: int | None
    endpoints: tuple[Endpoint, ...]

    @property
    def display(self) -> str:
        base = f"{self.namespace}/{self.service}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def svc_chain(self) -> str:
        return SVC_PREFIX + _hash(self.display + self.protocol)

    def sep_chain(self, ep: Endpoint) -> str:
        return SEP_PREFIX + _hash(f"{self.display}{self.protocol}{ep.ip}:{ep.port}")


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_ports(services: Iterable[dict], slices: Iterable[dict]) -> list[ServicePort]:
    """Every (ClusterIP service, port) with its ready IPv4 endpoints, sorted for stable output."""
    by_service: dict[tuple[str, str], list[dict]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if name and (s.get("addressType") or "IPv4") == "IPv4":
            by_service.setdefault((meta.get("namespace") or "default", name), []).append(s)
    out = []
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or spec.get("type") == "ExternalName" or ":" in ip:
            continue
        ns, name = meta.get("namespace") or "default", meta.get("name") or ""
        affinity = None
        if spec.get("sessionAffinity") == "ClientIP":
            affinity = int(((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
                           or DEFAULT_AFFINITY_SECONDS)
        for sp in spec.get("ports") or []:
            proto = (sp.get("protocol") or "TCP").upper()
            port_name = sp.get("name") or ""
            eps: set[Endpoint] = set()
            for s in by_service.get((ns, name), []):
                number = None
                for p in s.get("ports") or []:
                    if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP").upper() == proto:
                        number = p.get("port")
                if number is None:
                    continue
                for ep in s.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    for addr in (ep.get("addresses") or [])[:1]:
                        eps.add(Endpoint(ip=addr, port=int(number)))
            out.append(ServicePort(namespace=ns, service=name, port_name=port_name, protocol=proto.lower(),
                                   cluster_ip=ip, port=int(sp["port"]), affinity_seconds=affinity,
                                   endpoints=tuple(sorted(eps, key=lambda e: (_ip_key(e.ip), e.port)))))
    return sorted(out, key=lambda p: (p.namespace, p.service, p.port_name, p.protocol))


def _ip_key(ip: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in ip.split("."))
    except ValueError:
        return (999,)


def render_rules(services: Iterable[dict], slices: Iterable[dict], *,
                 existing_chains: Iterable[str] = ()) -> str:
    """The ``iptables-restore --noflush`` input for the nat and filter tables.

    ``existing_chains``: Ambit service/endpoint chains currently in the nat table; those no
    longer needed are flushed and deleted."""
    ports = service_ports(services, slices)
    nat_chains = [SERVICES_CHAIN, POSTROUTING_CHAIN, MARK_MASQ_CHAIN]
    nat_rules = [
        f"-A {POSTROUTING_CHAIN} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A {POSTROUTING_CHAIN} -j MARK --xor-mark {MASQ_MARK}",
        f'-A {POSTROUTING_CHAIN} -m comment --comment "ambit service traffic requiring SNAT" -j MASQUERADE',
        f"-A {MARK_MASQ_CHAIN} -j MARK --or-mark {MASQ_MARK}",
    ]
    filter_rules = []
    for sp in ports:
        proto = sp.protocol
        dport = f"-p {proto} -m {proto} --dport {sp.port}"
        if not sp.endpoints:
            filter_rules.append(f'-A {SERVICES_CHAIN} -d {sp.cluster_ip}/32 -m comment --comment '
                                f'"{sp.display} has no endpoints" {dport} '
                                "-j REJECT --reject-with icmp-port-unreachable")
            continue
        svc = sp.svc_chain
        nat_chains.append(svc)
        nat_rules.append(f'-A {SERVICES_CHAIN} -d {sp.cluster_ip}/32 -m comment --comment '
                         f'"{sp.display} cluster IP" {dport} -j {svc}')
        n = len(sp.endpoints)
        if sp.affinity_seconds is not None:
            for ep in sp.endpoints:
                sep = sp.sep_chain(ep)
                nat_rules.append(f'-A {svc} -m comment --comment "{sp.display} -> {ep.ip}:{ep.port}" '
                                 f"-m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck "
                                 f"--seconds {sp.affinity_seconds} --reap -j {sep}")
        for i, ep in enumerate(sp.endpoints):
            sep = sp.sep_chain(ep)
            nat_chains.append(sep)
            spread = f"-m statistic --mode random --probability {1.0 / (n - i):0.10f} " if i < n - 1 else ""
            nat_rules.append(f'-A {svc} -m comment --comment "{sp.display} -> {ep.ip}:{ep.port}" {spread}-j {sep}')
            nat_rules.append(f'-A {sep} -s {ep.ip}/32 -m comment --comment "{sp.display}" -j {MARK_MASQ_CHAIN}')
            sticky = (f"-m recent --name {sep} --mask 255.255.255.255 --rsource --set "
                      if sp.affinity_seconds is not None else "")
            nat_rules.append(f'-A {sep} -p {proto} -m comment --comment "{sp.display}" {sticky}'
                             f"-m {proto} -j DNAT --to-destination {ep.ip}:{ep.port}")
    active = set(nat_chains)
    stale = sorted(c for c in set(existing_chains)
                   if c.startswith((SVC_PREFIX, SEP_PREFIX)) and c not in active)
    lines = ["*nat"]
    lines += [f":{c} - [0:0]" for c in [*nat_chains, *stale]]
    lines += nat_rules
    lines += [f"-X {c}" for c in stale]
    lines += ["COMMIT", "*filter", f":{SERVICES_CHAIN} - [0:0]", *filter_rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def parse_chains(save_output: str) -> set[str]:
    """Ambit's service/endpoint chains in an ``iptables-save`` dump."""
    return {line[1:].split()[0] for line in save_output.splitlines()
            if line.startswith(f":{SVC_PREFIX}") or line.startswith(f":{SEP_PREFIX}")}


Source = Callable[[], tuple[list[dict], list[dict]]]


class KubeProxy:
    """Keeps a node's service rules in step with ``source()`` (Services, EndpointSlices).

    ``netns``: run iptables inside that named namespace (for callers outside the node; the
    kubelet already runs in it)."""

    def __init__(self, *, source: Source, netns: str | None = None, min_sync_interval: float = 1.0,
                 debounce: float = 0.1, resync_period: float = 30.0) -> None:
        self._source = source
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self._min_interval = min_sync_interval
        self._debounce = debounce
        self._resync = resync_period
        self._pending = threading.Event()
        self.last_rules = ""
        self.syncs = 0

    def request_sync(self) -> None:
        self._pending.set()

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="kube-proxy", daemon=True)
        t.start()
        return t

    def run(self, stop: threading.Event) -> None:
        last = 0.0
        while not stop.is_set():
            self._pending.wait(self._resync)
            if stop.is_set():
                return
            stop.wait(self._debounce)  # let a burst of events settle
            wait = self._min_interval - (time.monotonic() - last)
            if wait > 0:
                stop.wait(wait)
            self._pending.clear()
            last = time.monotonic()
            try:
                self.sync()
            except Exception as exc:
                log.warning("kube-proxy: sync failed (%s); retrying", exc)
                self._pending.set()

    def sync(self) -> str:
        """Render and apply now; returns the rules applied."""
        services, slices = self._source()
        existing = parse_chains(self._run(["iptables-save", "-t", "nat"]))
        rules = render_rules(services, slices, existing_chains=existing)
        self._run(["iptables-restore", "-w", "5", "--noflush"], stdin=rules)
        self._ensure_hooks()
        if rules != self.last_rules:
            log.info("kube-proxy: applied rules for %d service ports (%d without endpoints)",
                     rules.count("cluster IP\""), rules.count("has no endpoints"))
        self.last_rules = rules
        self.syncs += 1
        return rules

    def cleanup(self) -> None:
        """Remove the hooks and every chain this proxy owns (the node netns dies anyway on down)."""
        for table, chain, match, target in HOOKS:
            args = [table, chain, *match, "-m", "comment", "--comment", HOOK_COMMENT, "-j", target]
            while self._iptables("-D", *args, check=False) == 0:
                pass
        existing = parse_chains(self._run(["iptables-save", "-t", "nat"]))
        own = [SERVICES_CHAIN, POSTROUTING_CHAIN, MARK_MASQ_CHAIN, *sorted(existing)]
        text = ("*nat\n" + "".join(f":{c} - [0:0]\n" for c in own) + "".join(f"-X {c}\n" for c in own)
                + f"COMMIT\n*filter\n:{SERVICES_CHAIN} - [0:0]\n-X {SERVICES_CHAIN}\nCOMMIT\n")
        self._run(["iptables-restore", "-w", "5", "--noflush"], stdin=text)

    def _ensure_hooks(self) -> None:
        for table, chain, match, target in HOOKS:
            args = [table, chain, *match, "-m", "comment", "--comment", HOOK_COMMENT, "-j", target]
            if self._iptables("-C", *args, check=False) != 0:
                self._iptables("-I", table, chain, "1", *args[2:])

    def _iptables(self, op: str, table: str, chain: str, *rest: str, check: bool = True) -> int:
        argv = [*self._prefix, "iptables", "-w", "5", "-t", table, op, chain, *rest]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise KubeProxyError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc.returncode

    def _run(self, argv: list[str], *, stdin: str | None = None) -> str:
        full = [*self._prefix, *argv]
        try:
            proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=30)
        except FileNotFoundError as exc:
            raise KubeProxyError(f"{argv[0]} is not installed; install iptables") from exc
        if proc.returncode != 0:
            raise KubeProxyError(f"{' '.join(full)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout
