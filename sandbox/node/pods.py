"""The pod runtime of a sandbox node: what the kubelet does to a pod, without the API.

``PodRuntime.sync(pods)`` is level-triggered: it is given every pod bound to the node and
starts a worker thread for each new one, tells workers of changed ones (deletionTimestamp), and
tears down workers whose pod is gone. A ``PodWorker``:

1. records the pod in ``<node>/pods/<uid>/pod.json`` *before* touching the machine, so a
   restarted kubelet can find and undo whatever it made;
2. mounts the pod's volumes, as the kubelet does before it makes a sandbox: a bound
   service-account token (TokenRequest) and the credentials files, then ``spec.volumes``
   (``podvolumes``); a missing ConfigMap/Secret or a failed hostPath type check keeps the pod
   Pending with a ``FailedMount`` event, retried with backoff;
3. creates the sandbox: netns ``cfg.pod_netns(uid)`` (lo up) and CNI ADD, retried with backoff
   while it fails, with a Warning event and a ``PodReadyToStartContainers=False`` condition
   carrying the plugin's message; no container starts before the whole chain succeeded
   (hostNetwork pods skip both and run in the node's namespace);
4. starts each container through ``launch`` with its volume mounts, restarts it per
   ``restartPolicy`` with exponential backoff (``CrashLoopBackOff``), runs readiness/liveness
   probes, refreshes tokens and re-syncs ConfigMap/Secret volumes;
5. publishes the status through the status subresource whenever it changes;
6. on deletion: SIGTERM, SIGKILL after the grace period (capped), CNI DEL (reverse order,
   cached config), netns delete, pod dir and logs removed.

Everything that talks to the API goes through the injected ``PodApi``.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol, Sequence

from sandbox.config import SandboxConfig
from sandbox.node import cni as cnimod
from sandbox.node import containers as ctr
from sandbox.node import layout, netns, serviceaccount
from sandbox.node.errors import CniError, ContainerError, NetnsError, NodeFsError
from sandbox.node.launch import SA_MOUNT, Bind
from sandbox.node.nodefs import NodeFs
from sandbox.node.podvolumes import PodVolumes
from sandbox.node.podstatus import ContainerView, SandboxView, build_status, now_rfc3339
from sandbox.node.probes import ProbeTracker, parse_probe, run_probe
from sandbox.node.volumes import VolumeError

log = logging.getLogger(__name__)

POD_STATE_FILE = "pod.json"


class PodRef(NamedTuple):
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_ref(pod: dict) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(meta.get("namespace") or "default", meta.get("name") or "", meta.get("uid") or "")


class PodApi(Protocol):
    """The API as the pod runtime needs it (``kubelet.KubePodApi``; tests pass a fake)."""

    def patch_pod_status(self, ref: PodRef, status: dict) -> None: ...

    def record_event(self, ref: PodRef, *, type: str, reason: str, message: str) -> None: ...

    def finalize_deletion(self, ref: PodRef) -> None: ...

    def request_token(self, ref: PodRef, *, service_account: str, expiration_seconds: int,
                      audiences: Sequence[str] = ()) -> tuple[str, float]:
        """A token bound to the pod and its expiry (epoch seconds); no audiences: the API's own."""
        ...

    def ca_bundle(self) -> bytes: ...

    def read_config_map(self, namespace: str, name: str) -> dict | None:
        """The ConfigMap, or None when it does not exist (other failures raise)."""
        ...

    def read_secret(self, namespace: str, name: str) -> dict | None:
        """The Secret, or None when it does not exist (other failures raise)."""
        ...


@dataclass(frozen=True)
class RuntimeSettings:
    restart_backoff_initial: float = 1.0
    """first delay before restarting a crashed container (the kubelet uses 10s)"""
    restart_backoff_max: float = 30.0
    """cap of the doubling restart delay (the kubelet uses 5m)"""
    restart_backoff_reset: float = 60.0
    """a container that ran this long restarts without delay again"""
    grace_cap: float = 5.0
    """terminationGracePeriodSeconds is honoured up to this many seconds"""
    sandbox_backoff_initial: float = 0.5
    """first delay before retrying a failed CNI ADD or token request"""
    sandbox_backoff_max: float = 10.0
    """cap of that delay"""
    del_attempts: int = 5
    """CNI DEL attempts on teardown before giving up (and leaking what the plugins hold)"""
    tick: float = 0.2
    """how often a worker checks its processes and probes"""
    token_seconds: int = 3600
    """requested service-account token lifetime"""
    volume_resync: float = 10.0
    """how often ConfigMap and Secret volumes are re-read from the API and rewritten if changed"""
    event_repeat: float = 60.0
    """a Warning that keeps happening (FailedMount) is recorded again after this many seconds"""


# ---- on-disk record of what was made for a pod ---------------------------------------------------
@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    host_network: bool
    netns: str
    """netns name ('' for hostNetwork pods)"""
    sandbox_id: str
    ifname: str = "eth0"
    pids: dict[str, list[int]] | None = None
    """container -> [pid, start ticks]"""

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{POD_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, directory / POD_STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> "PodRecord":
        doc = json.loads((directory / POD_STATE_FILE).read_text())
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def _kill_recorded(pids: dict[str, list[int]], *, grace: float) -> None:
    """Kill recorded container process groups whose pid still names the same process."""
    live = [pid for pid, ticks in pids.values() if ctr.start_ticks(pid) == ticks]
    _signal_groups(live, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(ctr.start_ticks(p) is not None for p in live):
        time.sleep(0.05)
    _signal_groups(live, signal.SIGKILL)


def _signal_groups(pids: Iterable[int], sig: signal.Signals) -> None:
    """Signal whole process groups; every container process leads its own session and group."""
    for pid in pids:
        if pid > 1:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass


# ---- one container ------------------------------------------------------------------------------
class _Container:
    def __init__(self, spec: dict, *, restart_count: int) -> None:
        self.spec = spec
        self.name: str = spec.get("name") or ""
        self.view = ContainerView(name=self.name, image=spec.get("image") or "", restart_count=restart_count)
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.started_mono = 0.0
        self.next_start: float | None = 0.0  # monotonic time of the next (re)start; None: never again
        self.backoff = 0.0
        self.readiness: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.ever_started = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PodWorker:
    """Drives one pod from creation to deletion on its own thread."""

    def __init__(self, *, runtime: "PodRuntime", pod: dict) -> None:
        self.rt = runtime
        self.cfg = runtime.cfg
        self.settings = runtime.settings
        self.pod = pod
        self.ref = pod_ref(pod)
        spec = pod.get("spec") or {}
        self.host_network = bool(spec.get("hostNetwork"))
        self.dir = layout.pod_dir(self.cfg, runtime.node, self.ref.uid)
        self.netns_name = "" if self.host_network else self.cfg.pod_netns(self.ref.uid)
        self.record = PodRecord(namespace=self.ref.namespace, name=self.ref.name, uid=self.ref.uid,
                                host_network=self.host_network, netns=self.netns_name,
                                sandbox_id=secrets.token_hex(32), pids={})
        previous_counts = {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            ran = bool((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated"))
            previous_counts[cs.get("name")] = int(cs.get("restartCount") or 0) + (1 if ran else 0)
        self.containers = [_Container(c, restart_count=previous_counts.get(c.get("name"), 0))
                           for c in spec.get("containers") or []]
        self.sandbox = SandboxView(host_ip=runtime.host_ip,
                                   start_time=(pod.get("status") or {}).get("startTime") or now_rfc3339())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._delete = False
        self._finalize = False
        self._stop = False
        self._teardown_on_stop = False
        self._published: str | None = None
        self._last_status: dict | None = None
        self._publish_retry_at = 0.0
        self._last_event: tuple[str, str] | None = None
        self._token_refresh_at: float | None = None
        self._recorded: dict[tuple[str, str], float] = {}
        self._mounted = False
        self._sandbox_started = False
        self.secrets_dir: Path | None = None
        self.volumes: PodVolumes | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.ref}", daemon=True)

    # ---- control (any thread) ----
    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict) -> None:
        with self._lock:
            self.pod = pod
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                self._delete = True
                self._finalize = True
        self._wake.set()

    def request_delete(self) -> None:
        """The pod is gone from the API: tear everything down."""
        with self._lock:
            self._delete = True
        self._wake.set()

    def stop(self, *, teardown: bool) -> None:
        """Kubelet shutdown: stop managing the pod, leaving it running unless ``teardown``."""
        with self._lock:
            self._stop = True
            self._teardown_on_stop = teardown
        self._wake.set()

    @property
    def pod_ip(self) -> str:
        return self.sandbox.pod_ips[0] if self.sandbox.pod_ips else ""

    @property
    def netns_path(self) -> str:
        return str(netns.path(self.netns_name)) if self.netns_name else ""

    # ---- the worker thread ----
    def _halting(self) -> bool:
        return self._delete or self._stop

    def _run(self) -> None:
        try:
            self.record.save(self.dir)
            self._publish()
            if self._prepare_credentials() and self._prepare_volumes() and self._create_sandbox():
                self._loop()
        except Exception:
            log.exception("pod %s: worker failed; tearing it down", self.ref)
            self._delete = True
        finally:
            try:
                if self._delete or self._teardown_on_stop:
                    self._teardown()
            except Exception:
                log.exception("pod %s: teardown failed", self.ref)
            finally:
                self.done.set()

    def _create_sandbox(self) -> bool:
        if self.host_network:
            self.sandbox.pod_ips = [self.rt.host_ip]
            self.sandbox.ready, self.sandbox.reason, self.sandbox.message = True, "", ""
            return True
        backoff = self.settings.sandbox_backoff_initial
        self._sandbox_started = True
        while not self._halting():
            try:
                netns.add(self.netns_name)
                result = self.rt.cni.add(self._cni_conf())
                ips = cnimod.result_ips(result, ifname=self.record.ifname)
                if not ips:
                    raise CniError("the chain's result assigns no address to eth0; "
                                   "is the first plugin an interface plugin with IPAM?", command="ADD")
                self.sandbox.pod_ips = ips
                self.sandbox.ready, self.sandbox.reason, self.sandbox.message = True, "", ""
                log.info("pod %s: sandbox %s ready, ip %s", self.ref, self.netns_name, ips[0])
                return True
            except (CniError, NetnsError) as exc:
                message = f"failed to set up sandbox for pod {self.ref}: {exc}"
                log.warning("%s; retrying in %.1fs", message, backoff)
                self.sandbox.ready, self.sandbox.reason, self.sandbox.message = False, "FailedCreatePodSandBox", str(exc)
                self._event("Warning", "FailedCreatePodSandBox", message)
                self._cni_del_quietly()  # release what the chain got half-way (addresses, veths)
                self._publish(force=True)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.sandbox_backoff_max)
        return False

    def _prepare_credentials(self) -> bool:
        if not serviceaccount.wants_token(self.pod):
            return True
        self.secrets_dir = self.dir / "serviceaccount"
        backoff = self.settings.sandbox_backoff_initial
        while not self._halting():
            try:
                self._refresh_token(first=True)
                return True
            except Exception as exc:  # the API's errors, network errors: all retried
                message = (f"MountVolume.SetUp failed for volume \"kube-api-access\": cannot fetch a token for "
                           f"service account {serviceaccount.service_account_name(self.pod)}: {exc}")
                log.warning("pod %s: %s; retrying in %.1fs", self.ref, message, backoff)
                self._event("Warning", "FailedMount", message)
                self._publish()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.sandbox_backoff_max)
        return False

    def _prepare_volumes(self) -> bool:
        """Write every volume in ``spec.volumes``; until all can be, the pod stays ContainerCreating."""
        try:
            self.volumes = PodVolumes(pod=self.pod, node=self.rt.node, root=self.dir / "volumes",
                                      sources=_PodSources(self), resync=self.settings.volume_resync,
                                      label=str(self.ref), locate=self.rt.node_fs.path)
        except VolumeError as exc:  # the spec is immutable: wait for the pod's deletion
            message = f"cannot mount the volumes of pod {self.ref}: {exc}"
            log.warning("%s", message)
            self._event("Warning", "FailedMount", message)
            self._publish()
            while not self._halting():
                self._sleep(self.settings.sandbox_backoff_max)
            return False
        backoff = self.settings.sandbox_backoff_initial
        while not self._halting():
            problems = self.volumes.setup()
            if not problems:
                self._mounted = True
                return True
            for message in problems:
                log.warning("pod %s: %s; retrying in %.1fs", self.ref, message, backoff)
                self._event("Warning", "FailedMount", message, repeat=True)
            self._publish()
            self._sleep(backoff)
            backoff = min(backoff * 2, self.settings.sandbox_backoff_max)
        return False

    def _refresh_token(self, *, first: bool = False) -> None:
        issued = time.time()
        token, expires = self.rt.api.request_token(
            self.ref, service_account=serviceaccount.service_account_name(self.pod),
            expiration_seconds=self.settings.token_seconds)
        assert self.secrets_dir is not None
        if first:
            serviceaccount.write_credentials(self.secrets_dir, token=token, ca=self.rt.api.ca_bundle(),
                                             namespace=self.ref.namespace)
        else:
            serviceaccount.write_file(self.secrets_dir, "token", token.encode(), mode=0o600)
        self._token_refresh_at = time.monotonic() + (serviceaccount.refresh_after(issued, expires) - issued)

    def _loop(self) -> None:
        while not self._halting():
            now = time.monotonic()
            for c in self.containers:
                self._tend(c, now)
            if self._token_refresh_at is not None and now >= self._token_refresh_at:
                try:
                    self._refresh_token()
                except Exception as exc:
                    log.warning("pod %s: token refresh failed (%s); retrying in 10s", self.ref, exc)
                    self._token_refresh_at = now + 10.0
            if self.volumes is not None and now >= self.volumes.next_due:
                for message in self.volumes.sync():
                    self._event("Warning", "FailedMount", message, repeat=True)
            self._publish()
            self._sleep(self.settings.tick)

    # ---- containers ----
    def _tend(self, c: _Container, now: float) -> None:
        if c.proc is not None and c.proc.poll() is not None:
            self._exited(c, now)
        if c.proc is None and c.next_start is not None and now >= c.next_start:
            self._start(c, now)
        if c.running:
            self._probe(c, now)

    def _start(self, c: _Container, now: float) -> None:
        try:
            env = ctr.container_env(self.pod, c.spec, pod_ip=self.pod_ip, host_ip=self.rt.host_ip,
                                    api_host=self.cfg.host_ip, api_port=self.cfg.api_port)
            argv = ctr.container_argv(c.spec, env)
            binds = self._binds(c)
            c.readiness = c.liveness = None
            if c.spec.get("readinessProbe"):
                c.readiness = ProbeTracker(parse_probe(c.spec["readinessProbe"], c.spec, pod_ip=self.pod_ip),
                                           started_at=now, initially_ok=False)
            if c.spec.get("livenessProbe"):
                c.liveness = ProbeTracker(parse_probe(c.spec["livenessProbe"], c.spec, pod_ip=self.pod_ip),
                                          started_at=now, initially_ok=True)
            c.proc = ctr.spawn(argv, env=env,
                               log_path=layout.pod_log_path(self.cfg, self.rt.node, self.ref.namespace,
                                                            self.ref.name, c.name),
                               netns_path=self.netns_path or None, node_mntns=self.rt.node_fs.mntns(),
                               binds=binds, scratch_dir=self.dir / "mnt", workdir=c.spec.get("workingDir"))
        except (ContainerError, NodeFsError, OSError) as exc:
            reason = exc.reason if isinstance(exc, ContainerError) else "RunContainerError"
            c.view.state = {"waiting": {"reason": reason, "message": str(exc)}}
            c.next_start = now + self._next_backoff(c, now)
            self._event("Warning", "Failed", f"Error: {exc}")
            return
        c.started_mono = now
        c.pid = c.proc.pid
        if c.ever_started:
            c.view.restart_count += 1
        c.ever_started = True
        c.view.state = {"running": {"startedAt": now_rfc3339()}}
        c.view.container_id = f"ambit://{c.proc.pid}"
        c.view.ready = c.readiness is None
        c.next_start = None
        ticks = ctr.start_ticks(c.proc.pid)
        self.record.pids = {**(self.record.pids or {}), c.name: [c.proc.pid, ticks or 0]}
        self.record.save(self.dir)
        log.info("pod %s: container %s started (pid %d)", self.ref, c.name, c.proc.pid)

    def _binds(self, c: _Container) -> list[Bind]:
        """The container's mounts: its volumeMounts, and the service-account credentials unless
        one of them is at that path already (as the ServiceAccount admission plugin decides)."""
        binds = self.volumes.binds(c.spec) if self.volumes is not None else []
        if self.secrets_dir is not None and not any(b.target == SA_MOUNT for b in binds):
            binds.append(Bind(str(self.secrets_dir), SA_MOUNT, True))
        return binds

    def _exited(self, c: _Container, now: float) -> None:
        assert c.proc is not None
        code = ctr.returncode_to_exit(c.proc.returncode)
        c.proc = None
        _signal_groups([c.pid], signal.SIGKILL)  # its children die with it, as in a pid namespace
        terminated = {"exitCode": code, "reason": ctr.exit_reason(code),
                      "startedAt": (c.view.state.get("running") or {}).get("startedAt"),
                      "finishedAt": now_rfc3339(), "containerID": c.view.container_id}
        c.view.ready = False
        c.readiness = c.liveness = None
        policy = (self.pod.get("spec") or {}).get("restartPolicy") or "Always"
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        log.info("pod %s: container %s exited with %d (%s)", self.ref, c.name, code,
                 "will restart" if restart else "stays terminated")
        if not restart:
            c.view.state = {"terminated": terminated}
            c.next_start = None
            return
        delay = self._next_backoff(c, now)
        c.view.last_state = {"terminated": terminated}
        c.next_start = now + delay
        c.view.state = {"waiting": {"reason": "CrashLoopBackOff",
                                    "message": f"back-off {delay:.0f}s restarting failed container={c.name} "
                                               f"pod={self.ref.name}_{self.ref.namespace}({self.ref.uid})"}}
        if code != 0:
            self._event("Warning", "BackOff", f"Back-off restarting failed container {c.name} in pod {self.ref}")

    def _next_backoff(self, c: _Container, now: float) -> float:
        s = self.settings
        if c.ever_started and now - c.started_mono >= s.restart_backoff_reset:
            c.backoff = 0.0
        c.backoff = s.restart_backoff_initial if c.backoff == 0 else min(c.backoff * 2, s.restart_backoff_max)
        return c.backoff

    def _probe(self, c: _Container, now: float) -> None:
        if c.liveness is not None and c.liveness.due(now):
            ok, msg = run_probe(c.liveness.probe, exec_fn=self._exec_fn(c))
            if c.liveness.record(ok, time.monotonic(), msg) and not c.liveness.ok:
                self._event("Warning", "Unhealthy", f"Liveness probe failed: {msg}")
                log.info("pod %s: container %s failed liveness (%s); restarting it", self.ref, c.name, msg)
                self._kill_containers([c])
                return
        if c.readiness is not None and c.readiness.due(now):
            ok, msg = run_probe(c.readiness.probe, exec_fn=self._exec_fn(c))
            c.readiness.record(ok, time.monotonic(), msg)
            if not ok and msg and time.monotonic() - c.started_mono > c.readiness.probe.initial_delay + 1:
                self._event("Warning", "Unhealthy", f"Readiness probe failed: {msg}")
            c.view.ready = c.readiness.ok

    def _exec_fn(self, c: _Container):
        def run(command: list[str], timeout: float) -> tuple[bool, str]:
            env = ctr.container_env(self.pod, c.spec, pod_ip=self.pod_ip, host_ip=self.rt.host_ip,
                                    api_host=self.cfg.host_ip, api_port=self.cfg.api_port)
            # in the container's own mount namespace: the command sees its volumes and files
            argv = ctr.launcher_argv(command, netns_path=self.netns_path or None,
                                     mntns_path=f"/proc/{c.pid}/ns/mnt", workdir=c.spec.get("workingDir"))
            try:
                proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return False, f"command timed out after {timeout:.0f}s"
            out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-200:]
            return proc.returncode == 0, out
        return run

    def _kill_containers(self, targets: list[_Container]) -> None:
        """SIGTERM, then SIGKILL after the pod's grace period (capped); reaps the processes."""
        live = [c for c in targets if c.running]
        if not live:
            return
        grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        grace = min(float(30 if grace is None else grace), self.settings.grace_cap)
        _signal_groups([c.proc.pid for c in live], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.running for c in live):
            time.sleep(0.05)
        _signal_groups([c.proc.pid for c in live], signal.SIGKILL)
        for c in live:
            try:
                c.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("pod %s: container %s (pid %d) survived SIGKILL", self.ref, c.name, c.proc.pid)

    # ---- teardown ----
    def _teardown(self) -> None:
        log.info("pod %s: tearing down", self.ref)
        self._kill_containers(self.containers)
        for c in self.containers:
            if c.proc is not None:
                c.proc.poll()
        if self.netns_name and self._sandbox_started:
            netns.kill_all(self.netns_name, grace=0.5)
            self._cni_del()
            try:
                netns.delete(self.netns_name)
            except NetnsError as exc:
                log.error("pod %s: %s", self.ref, exc)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(layout.pod_log_dir(self.cfg, self.rt.node, self.ref.namespace, self.ref.name),
                      ignore_errors=True)
        if self._finalize:
            try:
                self.rt.api.finalize_deletion(self.ref)
            except Exception as exc:
                log.warning("pod %s: could not finalize its deletion: %s", self.ref, exc)

    def _cni_conf(self) -> cnimod.RuntimeConf:
        return cnimod.pod_runtime_conf(container_id=self.record.sandbox_id, netns=self.netns_path,
                                       namespace=self.ref.namespace, name=self.ref.name, uid=self.ref.uid,
                                       ifname=self.record.ifname, port_mappings=cnimod.port_mappings(self.pod))

    def _cni_del(self) -> None:
        backoff = self.settings.sandbox_backoff_initial
        for attempt in range(1, self.settings.del_attempts + 1):
            try:
                self.rt.cni.delete(self._cni_conf())
                return
            except CniError as exc:
                if attempt == self.settings.del_attempts:
                    log.error("pod %s: CNI DEL failed %d times, giving up (the plugins may leak state): %s",
                              self.ref, attempt, exc)
                    self._event("Warning", "FailedKillPod", f"CNI DEL failed: {exc}")
                    return
                log.warning("pod %s: CNI DEL failed (%s); retrying in %.1fs", self.ref, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.settings.sandbox_backoff_max)

    def _cni_del_quietly(self) -> None:
        try:
            self.rt.cni.delete(self._cni_conf())
        except CniError as exc:
            log.info("pod %s: cleanup DEL after failed ADD: %s", self.ref, exc)

    # ---- status and events ----
    def _status(self) -> dict:
        if not self.sandbox.ready or not self._mounted:
            for c in self.containers:
                if not c.ever_started and "waiting" in c.view.state:
                    c.view.state = {"waiting": {"reason": "ContainerCreating"}}
        return build_status(self.pod, sandbox=self.sandbox, containers=[c.view for c in self.containers],
                            previous=self._last_status or self.pod.get("status"))

    def _publish(self, *, force: bool = False) -> None:
        status = self._status()
        text = json.dumps(status, sort_keys=True)
        if text == self._published and not force:
            return
        if not force and time.monotonic() < self._publish_retry_at:
            return
        try:
            self.rt.api.patch_pod_status(self.ref, status)
        except Exception as exc:
            log.warning("pod %s: status update failed (%s); retrying", self.ref, exc)
            self._publish_retry_at = time.monotonic() + 1.0
            return
        self._published = text
        self._last_status = status  # transition times stay stable across our own updates

    def _event(self, etype: str, reason: str, message: str, *, repeat: bool = False) -> None:
        """Record an event, not twice in a row; with ``repeat``, one per message every
        ``event_repeat`` seconds (several volumes failing in turn do not flood the API)."""
        if repeat:
            now = time.monotonic()
            last = self._recorded.get((reason, message))
            if last is not None and now - last < self.settings.event_repeat:
                return
            self._recorded[(reason, message)] = now
        elif self._last_event == (reason, message):
            return
        self._last_event = (reason, message)
        try:
            self.rt.api.record_event(self.ref, type=etype, reason=reason, message=message)
        except Exception as exc:
            log.debug("pod %s: event %s not recorded: %s", self.ref, reason, exc)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


class _PodSources:
    """``podvolumes.VolumeSources`` for one pod, over the runtime's ``PodApi``."""

    def __init__(self, worker: PodWorker) -> None:
        self._api = worker.rt.api
        self._ref = worker.ref
        self._pod = worker.pod

    def read_object(self, kind: str, name: str) -> dict | None:
        if kind == "configmap":
            return self._api.read_config_map(self._ref.namespace, name)
        if kind == "secret":
            return self._api.read_secret(self._ref.namespace, name)
        raise ValueError(f"BUG: volume source kind {kind!r}")

    def request_token(self, *, audience: str, expiration_seconds: int) -> tuple[str, float]:
        return self._api.request_token(self._ref, service_account=serviceaccount.service_account_name(self._pod),
                                       expiration_seconds=expiration_seconds,
                                       audiences=[audience] if audience else [])


class PodRuntime:
    """All pods of one node. Thread-safe; ``sync`` may be called from any thread."""

    def __init__(self, *, cfg: SandboxConfig, node: str, host_ip: str, api: PodApi,
                 cni: cnimod.CniRuntime | None = None, settings: RuntimeSettings = RuntimeSettings()) -> None:
        self.cfg = cfg
        self.node = node
        self.host_ip = host_ip
        self.api = api
        self.node_fs = NodeFs(cfg, node)
        """the node's filesystem: containers' mount namespaces are made from it, plugins run in it"""
        self.cni = cni or cnimod.CniRuntime.for_node(cfg, node, node_fs=self.node_fs)
        self.settings = settings
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def sync(self, pods: Iterable[dict]) -> None:
        desired = {}
        for pod in pods:
            uid = (pod.get("metadata") or {}).get("uid")
            if uid:
                desired[uid] = pod
        with self._lock:
            if self._stopped:
                return
            for uid in [u for u, w in self._workers.items() if w.done.is_set()]:
                del self._workers[uid]
            for uid, pod in desired.items():
                worker = self._workers.get(uid)
                if worker is None:
                    if (pod.get("metadata") or {}).get("deletionTimestamp"):
                        continue  # never started here, nothing to tear down
                    phase = (pod.get("status") or {}).get("phase")
                    if phase in ("Succeeded", "Failed") and not layout.pod_dir(self.cfg, self.node, uid).exists():
                        continue  # finished before this kubelet started: do not run it again
                    worker = PodWorker(runtime=self, pod=pod)
                    self._workers[uid] = worker
                    worker.start()
                else:
                    worker.update(pod)
            for uid, worker in self._workers.items():
                if uid not in desired:
                    worker.request_delete()

    def worker(self, uid: str) -> PodWorker | None:
        with self._lock:
            return self._workers.get(uid)

    def uids(self) -> list[str]:
        with self._lock:
            return [u for u, w in self._workers.items() if not w.done.is_set()]

    def shutdown(self, *, teardown: bool, timeout: float = 30.0) -> None:
        """Stop every worker; with ``teardown`` also kill and remove every pod (tests, node drain)."""
        with self._lock:
            self._stopped = True
            workers = list(self._workers.values())
        for w in workers:
            w.stop(teardown=teardown)
        deadline = time.monotonic() + timeout
        for w in workers:
            w.done.wait(max(0.0, deadline - time.monotonic()))

    def adopt(self, existing_uids: Iterable[str]) -> list[str]:
        """Clean up what a previous kubelet left in the node's pod dirs. Pods gone from the API are
        removed; pods that still exist are torn down too and then recreated cleanly by ``sync``
        (new netns, new CNI ADD, containers restarted). Returns one line per pod handled."""
        keep = set(existing_uids)
        handled = []
        root = layout.pods_dir(self.cfg, self.node)
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if not d.is_dir():
                continue
            try:
                rec = PodRecord.load(d)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("adopt: unreadable pod record in %s (%s); removing it", d, exc)
                shutil.rmtree(d, ignore_errors=True)
                continue
            _kill_recorded(rec.pids or {}, grace=1.0)
            if rec.netns:
                netns.kill_all(rec.netns, grace=0.5)
                rt = cnimod.pod_runtime_conf(container_id=rec.sandbox_id, netns=str(netns.path(rec.netns)),
                                             namespace=rec.namespace, name=rec.name, uid=rec.uid, ifname=rec.ifname)
                try:
                    self.cni.delete(rt)
                except CniError as exc:
                    log.warning("adopt: CNI DEL of %s/%s failed: %s", rec.namespace, rec.name, exc)
                try:
                    netns.delete(rec.netns)
                except NetnsError as exc:
                    log.warning("adopt: %s", exc)
            shutil.rmtree(d, ignore_errors=True)
            if rec.uid in keep:
                handled.append(f"{rec.namespace}/{rec.name}: recreating")
            else:
                shutil.rmtree(layout.pod_log_dir(self.cfg, self.node, rec.namespace, rec.name), ignore_errors=True)
                handled.append(f"{rec.namespace}/{rec.name}: removed (no longer in the API)")
        return handled
