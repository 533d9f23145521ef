"""Pod status as the kubelet computes it: phase, conditions, container statuses. Pure functions.

Phase (kubelet ``getPhase``): a container waiting for its first start keeps the pod Pending;
any running container makes it Running; when all have stopped, ``restartPolicy`` decides:
Always -> Running (restarting), all exit 0 -> Succeeded, Never -> Failed, OnFailure -> Running.
Conditions keep their ``lastTransitionTime`` while their status does not change.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

CONDITION_ORDER = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerView:
    """What the runtime knows about one container, in Kubernetes' words."""

    name: str
    image: str = ""
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    ready: bool = False
    restart_count: int = 0
    container_id: str = ""

    def as_status(self) -> dict:
        status = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": "running" in self.state,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


@dataclass
class SandboxView:
    ready: bool = False
    pod_ips: list[str] = field(default_factory=list)
    host_ip: str = ""
    start_time: str = ""
    reason: str = ""
    message: str = ""


def pod_phase(restart_policy: str, containers: list[ContainerView]) -> str:
    waiting = running = stopped = succeeded = 0
    for c in containers:
        if "running" in c.state:
            running += 1
        elif "terminated" in c.state:
            stopped += 1
            if c.state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif "terminated" in c.last_state:
            stopped += 1  # waiting to restart after having run
        else:
            waiting += 1
    if not containers or waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


def _condition(ctype: str, ok: bool, *, reason: str = "", message: str = "",
               previous: dict[str, dict], now: str) -> dict:
    status = "True" if ok else "False"
    prev = previous.get(ctype)
    cond = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": prev["lastTransitionTime"] if prev and prev.get("status") == status
        and prev.get("lastTransitionTime") else now,
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def build_status(pod: dict, *, sandbox: SandboxView, containers: list[ContainerView],
                 previous: dict | None = None, now: str | None = None) -> dict:
    """The pod's whole ``status`` object."""
    now = now or now_rfc3339()
    spec = pod.get("spec") or {}
    prev_conds = {c.get("type"): c for c in ((previous or {}).get("conditions") or [])
                  if isinstance(c, dict)}
    phase = pod_phase(spec.get("restartPolicy") or "Always", containers)
    unready = [c.name for c in containers if not c.ready]
    all_ready = not unready and bool(containers)
    if phase == "Succeeded":
        ready_reason, ready_msg = "PodCompleted", ""
        all_ready = False
    elif all_ready:
        ready_reason, ready_msg = "", ""
    else:
        ready_reason, ready_msg = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    conditions = [
        _condition("PodReadyToStartContainers", sandbox.ready, reason=sandbox.reason if not sandbox.ready else "",
                   message=sandbox.message if not sandbox.ready else "", previous=prev_conds, now=now),
        _condition("Initialized", True, previous=prev_conds, now=now),
        _condition("Ready", all_ready, reason=ready_reason, message=ready_msg, previous=prev_conds, now=now),
        _condition("ContainersReady", all_ready, reason=ready_reason, message=ready_msg,
                   previous=prev_conds, now=now),
        _condition("PodScheduled", True, previous=prev_conds, now=now),
    ]
    status: dict = {"phase": phase, "conditions": conditions}
    if sandbox.host_ip:
        status["hostIP"] = sandbox.host_ip
        status["hostIPs"] = [{"ip": sandbox.host_ip}]
    if sandbox.pod_ips:
        status["podIP"] = sandbox.pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in sandbox.pod_ips]
    if sandbox.start_time:
        status["startTime"] = sandbox.start_time
    status["containerStatuses"] = [c.as_status() for c in containers]
    return status
