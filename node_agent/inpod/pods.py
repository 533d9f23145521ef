"""Capturing and releasing pods: listeners, redirection and certificates, in a safe order.

- ``PodRecords``: what the CNI plugin told us at ADD (netns path, IPs) per pod UID, on disk, so
  a restarted agent finds every pod's namespace again; a /proc + /run/netns scan by pod IP is
  the fallback for pods created before the agent was installed.
- ``PodCaptures``: capture = open 15001/15006/15008 inside the pod's netns and start its proxy,
  then install the redirection rules (listeners first, so a redirected connection never meets a
  closed port); release = remove the rules first, then drain and stop the listeners. One lock
  per pod; both are idempotent. ``reconcile`` brings the node to the snapshot's wishes.

Fail closed: if the agent dies, the rules stay in the pod and point at ports nobody listens on,
so the app's connections are refused rather than sent in plaintext.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from node_agent.identity.spiffe import SpiffeId
from node_agent.inpod import redirect_iptables
from node_agent.inpod.errors import InpodError
from node_agent.inpod.netns import NetnsWorker, PodNetns
from node_agent.inpod.sockets import InpodSocketFactory
from node_agent.proxy import model
from node_agent.proxy.listener import ProxyInputs
from node_agent.proxy.pod import PodProxy
from node_agent.proxy.settings import INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodRecord:
    uid: str
    namespace: str
    name: str
    netns: str
    ips: tuple[str, ...]


class PodRecords:
    """``<state_dir>/pods/<uid>.json``, written atomically at CNI ADD, removed at DEL."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "pods"

    def put(self, rec: PodRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{rec.uid}.tmp"
        tmp.write_text(json.dumps({"uid": rec.uid, "namespace": rec.namespace, "name": rec.name,
                                   "netns": rec.netns, "ips": list(rec.ips)}))
        os.replace(tmp, self.dir / f"{rec.uid}.json")

    def get(self, uid: str) -> PodRecord | None:
        try:
            doc = json.loads((self.dir / f"{uid}.json").read_text())
            return PodRecord(uid=doc["uid"], namespace=doc["namespace"], name=doc["name"], netns=doc["netns"],
                             ips=tuple(doc.get("ips") or ()))
        except (OSError, ValueError, KeyError):
            return None

    def delete(self, uid: str) -> None:
        try:
            (self.dir / f"{uid}.json").unlink()
        except FileNotFoundError:
            pass

    def all(self) -> list[PodRecord]:
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            rec = self.get(path.stem)
            if rec is not None:
                out.append(rec)
        return out


def find_netns_by_ip(ip: str) -> str | None:
    """The path of a network namespace holding ``ip`` (named namespaces, then every process's)."""
    seen: set[int] = set()
    candidates: list[str] = []
    for d in ("/run/netns", "/var/run/netns"):
        if os.path.isdir(d):
            candidates += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    candidates += [f"/proc/{p}/ns/net" for p in sorted(os.listdir("/proc")) if p.isdigit()]
    for path in candidates:
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        if inode in seen:
            continue
        seen.add(inode)
        try:
            out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "addr", "show"], capture_output=True,
                                 text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if any(f" {ip}/" in line for line in out.splitlines()):
            return path
    return None


class _Captured:
    __slots__ = ("workload", "netns", "proxy", "identity")

    def __init__(self, workload: model.Workload, netns: PodNetns, proxy: PodProxy, identity: SpiffeId) -> None:
        self.workload = workload
        self.netns = netns
        self.proxy = proxy
        self.identity = identity


class PodCaptures:
    def __init__(
        self,
        *,
        inputs: ProxyInputs,
        worker: NetnsWorker,
        sockets: InpodSocketFactory,
        records: PodRecords,
        certs,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._inputs = inputs
        self._worker = worker
        self._sockets = sockets
        self._records = records
        self._certs = certs
        self._on_change = on_change
        self._pods: dict[str, _Captured] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.errors: dict[str, str] = {}

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    @property
    def captured(self) -> dict[str, model.Workload]:
        return {uid: c.workload for uid, c in self._pods.items()}

    def captured_ips(self) -> list[str]:
        return sorted(ip for c in self._pods.values() for ip in c.workload.ips)

    async def capture(self, workload: model.Workload, netns_path: str, *, fresh: bool = False) -> None:
        """Listeners, proxy, certificate, then rules. Idempotent; raises InpodError on failure (nothing left half-done).

        ``fresh``: the pod's netns was just made (CNI ADD), so its rules go in with one restore."""
        async with self._lock(workload.uid):
            current = self._pods.get(workload.uid)
            if current is not None:
                if current.workload.ips == workload.ips and os.stat(netns_path).st_ino == current.netns.inode:
                    await asyncio.to_thread(redirect_iptables.install, current.netns.path)  # repairs drift
                    return
                await self._release_locked(workload.uid)
            ns = PodNetns.open(netns_path)
            sockets = []
            proxy = None
            try:
                for host, port in (("127.0.0.1", OUTBOUND_PORT), ("0.0.0.0", INBOUND_PLAINTEXT_PORT),
                                   ("0.0.0.0", self._inputs.settings.tunnel_port)):
                    sockets.append(await self._worker.listen(ns, host=host, port=port))
                proxy = PodProxy(inputs=self._inputs, workload=workload, netns=ns, outbound=sockets[0],
                                 inbound_plaintext=sockets[1], inbound=sockets[2])
                await proxy.start()
                self._sockets.add_local(workload.uid, ns)
                self._certs.ensure(workload.identity, holder=workload.uid)
                await asyncio.to_thread(functools.partial(redirect_iptables.install, ns.path, fresh=fresh))
            except BaseException as exc:
                self._sockets.remove_local(workload.uid)
                if proxy is not None:
                    await proxy.stop(drain=0.0)
                for s in sockets:
                    s.close()
                try:
                    self._certs.release(workload.identity, holder=workload.uid)
                except Exception:
                    pass
                ns.close()
                self.errors[workload.uid] = str(exc)
                if isinstance(exc, (InpodError, OSError)):
                    raise InpodError(f"capturing pod {workload.namespace}/{workload.name} failed: {exc}") from exc
                raise
            self._pods[workload.uid] = _Captured(workload, ns, proxy, workload.identity)
            self.errors.pop(workload.uid, None)
            log.info("captured pod %s/%s (%s) in %s", workload.namespace, workload.name, ",".join(workload.ips), ns.path)
        self._on_change()

    async def release(self, uid: str) -> bool:
        async with self._lock(uid):
            released = await self._release_locked(uid)
        self._locks.pop(uid, None)
        if released:
            self._on_change()
        return released

    async def _release_locked(self, uid: str) -> bool:
        c = self._pods.pop(uid, None)
        if c is None:
            return False
        try:
            await asyncio.to_thread(redirect_iptables.remove, c.netns.path)
        except InpodError as exc:  # the netns may be gone with the pod: nothing left to remove
            log.info("removing redirection of %s/%s: %s", c.workload.namespace, c.workload.name, exc)
        self._sockets.remove_local(uid)
        await c.proxy.stop(drain=self._inputs.settings.drain_timeout)
        try:
            self._certs.release(c.identity, holder=uid)
        except Exception:
            log.exception("releasing the certificate of %s", c.identity)
        c.netns.close()
        log.info("released pod %s/%s", c.workload.namespace, c.workload.name)
        return True

    async def release_all(self) -> None:
        """Agent shutdown: stop the proxies but KEEP the rules (fail closed while the agent is away)."""
        for uid in list(self._pods):
            c = self._pods.pop(uid)
            self._sockets.remove_local(uid)
            await c.proxy.stop(drain=1.0)
            c.netns.close()

    def dump(self) -> list[dict]:
        out = []
        for uid, c in sorted(self._pods.items(), key=lambda kv: (kv[1].workload.namespace, kv[1].workload.name)):
            try:
                state = str(redirect_iptables.state(c.netns.path).status)
            except InpodError as exc:
                state = f"unknown ({exc})"
            out.append({
                "uid": uid, "namespace": c.workload.namespace, "name": c.workload.name,
                "ips": list(c.workload.ips), "netns": c.netns.path, "identity": str(c.identity),
                "redirection": state, "open_connections": c.proxy.open_connections,
            })
        for uid, err in sorted(self.errors.items()):
            out.append({"uid": uid, "redirection": "failed", "error": err})
        return out
