"""In-pod redirection with iptables: what the rules are, installing, removing, reading them back.

Inside each enrolled pod's network namespace, in the ``nat`` table (docs/redirection.md)::

    -A PREROUTING -j AMBIT_PREROUTING                       (inserted first, exactly once)
    -A OUTPUT -j AMBIT_OUTPUT                               (inserted first, exactly once)
    -A AMBIT_OUTPUT -m mark --mark 0x539 -j RETURN          the agent's own sockets
    -A AMBIT_OUTPUT -o lo -j RETURN                         loopback, incl. the pod's own IP
    -A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001     the app's outbound TCP
    -A AMBIT_PREROUTING -m mark --mark 0x539 -j RETURN
    -A AMBIT_PREROUTING -i lo -j RETURN
    -A AMBIT_PREROUTING -s 169.254.7.127/32 -p tcp -j RETURN    kubelet probes (SNATed, below)
    -A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN   the mTLS tunnel
    -A AMBIT_PREROUTING -p tcp -j REDIRECT --to-ports 15006     inbound TCP

No ``mangle`` rules: the agent never spoofs source addresses inside the pod, so replies need
no connmark/policy routing. Rules are written in exactly the form ``iptables-save`` prints, so
``state()`` compares lines. Everything is applied in one ``iptables-restore --noflush``
transaction run *inside* the pod's netns (``nsenter --net``): the pod is never half redirected.

On the node, ``sync_probe_snat`` keeps ``AMBIT_POSTROUTING`` (nat, node netns) SNATing TCP
that node-local sockets (the kubelet's probes) send to enrolled pod IPs to 169.254.7.127,
the source the in-pod rules let through: ``-m owner --socket-exists`` matches only packets of
local sockets, never forwarded traffic from other nodes. (Istio's istio-cni does the same.)

The renderers and the ``iptables-save`` parser are pure; ``install``/``remove``/``state`` and
the probe functions run the iptables tools and block for a few ms: from asyncio, call them with
``asyncio.to_thread``. Only one caller at a time per netns (the agent serializes per pod).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from node_agent.inpod.errors import RedirectError
from node_agent.inpod.netns import PodNetns
from node_agent.inpod.sockopt import PROXY_MARK

log = logging.getLogger(__name__)

TABLE = "nat"
CHAIN_PREROUTING = "AMBIT_PREROUTING"
CHAIN_OUTPUT = "AMBIT_OUTPUT"
CHAIN_POSTROUTING = "AMBIT_POSTROUTING"
POD_HOOKS = {"PREROUTING": CHAIN_PREROUTING, "OUTPUT": CHAIN_OUTPUT}
NODE_HOOKS = {"POSTROUTING": CHAIN_POSTROUTING}

PROBE_SOURCE_V4 = "169.254.7.127"
PROBE_SOURCE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"  # the address Istio uses

Status = Literal["installed", "partial", "absent"]
NetnsRef = str | os.PathLike | PodNetns
"""a pod's netns: a ``PodNetns`` (preferred: it cannot be swapped under us) or a path"""


@dataclass(frozen=True)
class RedirectSettings:
    """How pods are redirected; one instance for the whole agent."""

    mark: int = PROXY_MARK
    """SO_MARK of the agent's sockets; traffic carrying it is never redirected"""
    outbound_port: int = 15001
    """where the app's outbound TCP goes (the agent's listener on 127.0.0.1 in the pod)"""
    inbound_port: int = 15006
    """where inbound TCP goes (the agent's plaintext inbound listener in the pod)"""
    tunnel_port: int = 15008
    """inbound mTLS tunnel: reaches the agent's listener directly, never redirected"""
    iptables: str = "iptables"
    """prefix of the IPv4 tools: ``<iptables>-save``, ``<iptables>-restore`` (e.g. iptables-legacy)"""
    ip6tables: str = "ip6tables"
    """prefix of the IPv6 tools"""
    nsenter: str = "nsenter"
    """util-linux nsenter, to run the tools inside a netns"""
    command_timeout: float = 10.0
    """seconds one iptables tool may run before it counts as failed"""

    def __post_init__(self) -> None:
        for name in ("outbound_port", "inbound_port", "tunnel_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"RedirectSettings.{name}={getattr(self, name)!r} must be a TCP port (1-65535)")
        if not 0 < self.mark <= 0xFFFFFFFF:
            raise ValueError(f"RedirectSettings.mark={self.mark!r} must be a non-zero 32-bit mark")


DEFAULT_SETTINGS = RedirectSettings()


@dataclass(frozen=True)
class TableDump:
    """One table of ``iptables-save`` output: its chains and its ``-A`` lines, in order."""

    chains: frozenset[str] = frozenset()
    rules: tuple[str, ...] = ()

    def rules_of(self, chain: str) -> tuple[str, ...]:
        prefix = f"-A {chain} "
        return tuple(r for r in self.rules if r.startswith(prefix))

    def hook_count(self, builtin: str, chain: str) -> int:
        return self.rules.count(_hook(builtin, chain))


@dataclass(frozen=True, kw_only=True)
class RedirectState:
    """What is installed, for diagnostics (``ambit node redirection``)."""

    status: Status
    missing: tuple[str, ...] = ()
    """expected lines that are not there"""
    unexpected: tuple[str, ...] = ()
    """lines in our chains that should not be (or duplicate hooks)"""

    def __str__(self) -> str:
        lines = [self.status]
        lines += [f"  missing:    {line}" for line in self.missing]
        lines += [f"  unexpected: {line}" for line in self.unexpected]
        return "\n".join(lines)


# ---- the rules (pure) ----------------------------------------------------------------------
def pod_rules(settings: RedirectSettings = DEFAULT_SETTINGS, *, ipv6: bool = False) -> dict[str, tuple[str, ...]]:
    """Our chains in a pod's ``nat`` table, each as the exact lines ``iptables-save`` prints."""
    mark = f"-m mark --mark {settings.mark:#x}"
    probe = f"{PROBE_SOURCE_V6}/128" if ipv6 else f"{PROBE_SOURCE_V4}/32"
    return {
        CHAIN_PREROUTING: (
            f"-A {CHAIN_PREROUTING} {mark} -j RETURN",
            f"-A {CHAIN_PREROUTING} -i lo -j RETURN",
            f"-A {CHAIN_PREROUTING} -s {probe} -p tcp -j RETURN",
            f"-A {CHAIN_PREROUTING} -p tcp -m tcp --dport {settings.tunnel_port} -j RETURN",
            f"-A {CHAIN_PREROUTING} -p tcp -j REDIRECT --to-ports {settings.inbound_port}",
        ),
        CHAIN_OUTPUT: (
            f"-A {CHAIN_OUTPUT} {mark} -j RETURN",
            f"-A {CHAIN_OUTPUT} -o lo -j RETURN",
            f"-A {CHAIN_OUTPUT} -p tcp -j REDIRECT --to-ports {settings.outbound_port}",
        ),
    }


def probe_snat_rules(pod_ips: Iterable[str], *, ipv6: bool = False) -> dict[str, tuple[str, ...]]:
    """The node's ``AMBIT_POSTROUTING``: one SNAT rule per enrolled pod IP of the family."""
    source = PROBE_SOURCE_V6 if ipv6 else PROBE_SOURCE_V4
    addresses = {ipaddress.ip_address(ip) for ip in pod_ips}
    rules = []
    for addr in sorted(a for a in addresses if a.version == (6 if ipv6 else 4)):
        rules.append(
            f"-A {CHAIN_POSTROUTING} -d {addr}/{addr.max_prefixlen} -p tcp -m owner --socket-exists "
            f"-j SNAT --to-source {source}"
        )
    return {CHAIN_POSTROUTING: tuple(rules)}


def render_sync(chains: dict[str, tuple[str, ...]], *, hooks: dict[str, str], current: TableDump) -> str:
    """``iptables-restore --noflush`` input that makes ``chains`` exactly as given and leaves
    each hook present exactly once (inserted first when missing), whatever ``current`` holds."""
    lines = [f"*{TABLE}"]
    lines += [f":{chain} - [0:0]" for chain in chains]
    lines += [f"-F {chain}" for chain in chains]
    for rules in chains.values():
        lines += rules
    for builtin, chain in hooks.items():
        count = current.hook_count(builtin, chain)
        if count == 0:
            lines.append(f"-I {builtin} 1 -j {chain}")
        lines += [f"-D {builtin} -j {chain}"] * max(0, count - 1)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_fresh(chains: dict[str, tuple[str, ...]], *, hooks: dict[str, str]) -> str:
    """Input for a table that holds none of our chains: ``-N`` fails the whole commit if one exists,
    so a table that was not fresh after all is left untouched (and never gets a second hook)."""
    lines = [f"*{TABLE}"]
    lines += [f"-N {chain}" for chain in chains]
    for rules in chains.values():
        lines += rules
    lines += [f"-I {builtin} 1 -j {chain}" for builtin, chain in hooks.items()]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_remove(chains: Iterable[str], *, hooks: dict[str, str], current: TableDump) -> str | None:
    """Input that unhooks, flushes and deletes our chains; None when nothing of ours is there."""
    lines = []
    for builtin, chain in hooks.items():
        lines += [f"-D {builtin} -j {chain}"] * current.hook_count(builtin, chain)
    present = [chain for chain in chains if chain in current.chains]
    lines += [f"-F {chain}" for chain in present]
    lines += [f"-X {chain}" for chain in present]
    if not lines:
        return None
    return "\n".join([f"*{TABLE}", *lines, "COMMIT"]) + "\n"


def assess(chains: dict[str, tuple[str, ...]], *, hooks: dict[str, str], current: TableDump) -> RedirectState:
    """Compare what is installed with what should be."""
    anything = any(c in current.chains for c in chains) or any(current.hook_count(b, c) for b, c in hooks.items())
    if not anything:
        return RedirectState(status="absent")
    missing: list[str] = []
    unexpected: list[str] = []
    for builtin, chain in hooks.items():
        count = current.hook_count(builtin, chain)
        if count == 0:
            missing.append(_hook(builtin, chain))
        unexpected += [_hook(builtin, chain)] * max(0, count - 1)
    for chain, expected in chains.items():
        if chain not in current.chains:
            missing.append(f":{chain}")
        actual = current.rules_of(chain)
        if actual != expected:
            absent = [r for r in expected if r not in actual]
            extra = [r for r in actual if r not in expected]
            if not absent and not extra:  # the same rules, but in another order or repeated
                extra = list(actual)
            missing += absent
            unexpected += extra
    return RedirectState(
        status="partial" if missing or unexpected else "installed", missing=tuple(missing), unexpected=tuple(unexpected)
    )


def parse_save(text: str) -> dict[str, TableDump]:
    """Parse ``iptables-save`` output into its tables."""
    tables: dict[str, TableDump] = {}
    table = None
    chains: set[str] = set()
    rules: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table, chains, rules = line[1:], set(), []
        elif table is None:
            raise RedirectError(f"unexpected iptables-save line outside a table: {line!r}")
        elif line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            rules.append(line)
        elif line == "COMMIT":
            tables[table] = TableDump(frozenset(chains), tuple(rules))
            table = None
    return tables


def _hook(builtin: str, chain: str) -> str:
    return f"-A {builtin} -j {chain}"


# ---- running the tools ---------------------------------------------------------------------
def install(netns: NetnsRef, *, ipv6: bool = False, fresh: bool = False,
            settings: RedirectSettings = DEFAULT_SETTINGS) -> None:
    """Install (or repair) redirection in a pod's netns; idempotent. Verifies the result.

    ``netns``: a ``PodNetns`` or a path such as ``/var/run/netns/<name>``, ``/proc/<pid>/ns/net``.
    ``fresh``: the netns was just made (CNI ADD) and holds none of our rules: one atomic
    ``iptables-restore`` and no read-backs, which keeps pod start-up fast. If it turns out not to
    be fresh, the full read-repair-verify path runs instead.
    """
    chains = pod_rules(settings, ipv6=ipv6)
    if fresh:
        try:
            _restore(netns, render_fresh(chains, hooks=POD_HOOKS), ipv6=ipv6, settings=settings)
            return
        except RedirectError as exc:
            log.info("fast install in %s failed (%s); reading the table and repairing instead", _where(netns), exc)
    current = dump(netns, ipv6=ipv6, settings=settings)
    _restore(netns, render_sync(chains, hooks=POD_HOOKS, current=current), ipv6=ipv6, settings=settings)
    after = assess(chains, hooks=POD_HOOKS, current=dump(netns, ipv6=ipv6, settings=settings))
    if after.status != "installed":
        raise RedirectError(
            f"redirection in {_where(netns)} is {after.status} right after installing it; is something "
            f"else rewriting the pod's nat table?\n{after}"
        )


def remove(netns: NetnsRef, *, ipv6: bool = False, settings: RedirectSettings = DEFAULT_SETTINGS) -> bool:
    """Remove our hooks and chains from a pod's netns; returns False when there was nothing."""
    text = render_remove(pod_rules(settings, ipv6=ipv6), hooks=POD_HOOKS, current=dump(netns, ipv6=ipv6, settings=settings))
    if text is None:
        return False
    _restore(netns, text, ipv6=ipv6, settings=settings)
    return True


def state(netns: NetnsRef, *, ipv6: bool = False, settings: RedirectSettings = DEFAULT_SETTINGS) -> RedirectState:
    """installed / partial / absent, with the differing lines."""
    return assess(pod_rules(settings, ipv6=ipv6), hooks=POD_HOOKS, current=dump(netns, ipv6=ipv6, settings=settings))


def sync_probe_snat(
    pod_ips: Iterable[str],
    *,
    netns: NetnsRef | None = None,
    ipv6: bool = False,
    settings: RedirectSettings = DEFAULT_SETTINGS,
) -> None:
    """Make the node's ``AMBIT_POSTROUTING`` SNAT probes to exactly ``pod_ips`` (the enrolled
    pods on this node; addresses of the other family are ignored). ``netns=None``: the node's
    namespace is the caller's own (the agent runs with hostNetwork)."""
    chains = probe_snat_rules(pod_ips, ipv6=ipv6)
    current = dump(netns, ipv6=ipv6, settings=settings)
    if assess(chains, hooks=NODE_HOOKS, current=current).status == "installed":
        return
    _restore(netns, render_sync(chains, hooks=NODE_HOOKS, current=current), ipv6=ipv6, settings=settings)


def remove_probe_snat(*, netns: NetnsRef | None = None, ipv6: bool = False, settings: RedirectSettings = DEFAULT_SETTINGS) -> bool:
    text = render_remove([CHAIN_POSTROUTING], hooks=NODE_HOOKS, current=dump(netns, ipv6=ipv6, settings=settings))
    if text is None:
        return False
    _restore(netns, text, ipv6=ipv6, settings=settings)
    return True


def probe_snat_state(pod_ips: Iterable[str], *, netns: NetnsRef | None = None, ipv6: bool = False, settings: RedirectSettings = DEFAULT_SETTINGS) -> RedirectState:
    return assess(probe_snat_rules(pod_ips, ipv6=ipv6), hooks=NODE_HOOKS, current=dump(netns, ipv6=ipv6, settings=settings))


def dump(netns: NetnsRef | None, *, ipv6: bool = False, settings: RedirectSettings = DEFAULT_SETTINGS) -> TableDump:
    """The ``nat`` table of ``netns`` as it is now."""
    tool = f"{settings.ip6tables if ipv6 else settings.iptables}-save"
    out = _run(netns, [tool, "-t", TABLE], stdin=None, settings=settings)
    return parse_save(out.decode(errors="replace")).get(TABLE, TableDump())


def _restore(netns: NetnsRef | None, text: str, *, ipv6: bool, settings: RedirectSettings) -> None:
    tool = f"{settings.ip6tables if ipv6 else settings.iptables}-restore"
    try:
        _run(netns, [tool, "--noflush"], stdin=text.encode(), settings=settings)
    except RedirectError as exc:
        match = re.search(r"line:? (\d+)", str(exc))
        lines = text.splitlines()
        if match and 0 < int(match.group(1)) <= len(lines):
            raise RedirectError(f"{exc}\n  the failing line: {lines[int(match.group(1)) - 1]}") from exc
        raise


def _run(netns: NetnsRef | None, argv: list[str], *, stdin: bytes | None, settings: RedirectSettings) -> bytes:
    pass_fds: tuple[int, ...] = ()
    if netns is None:
        cmd = argv
    elif isinstance(netns, PodNetns):
        if netns.closed:
            raise RedirectError(f"BUG: {netns!r} is closed")
        # the child opens our very fd: the same namespace even if its name was reused
        cmd = [settings.nsenter, f"--net=/proc/self/fd/{netns.fd}", *argv]
        pass_fds = (netns.fd,)
    else:
        cmd = [settings.nsenter, f"--net={os.fspath(netns)}", *argv]
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, timeout=settings.command_timeout, pass_fds=pass_fds, check=False
        )
    except FileNotFoundError:
        raise RedirectError(f"{cmd[0]} is not installed; the agent needs util-linux (nsenter) and iptables") from None
    except subprocess.TimeoutExpired:
        raise RedirectError(f"{argv[0]} in {_where(netns)} took longer than {settings.command_timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RedirectError(f"{argv[0]} in {_where(netns)} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def _where(netns: NetnsRef | None) -> str:
    if netns is None:
        return "the node's network namespace"
    return f"network namespace {netns.path if isinstance(netns, PodNetns) else os.fspath(netns)}"
