"""Pod phase, conditions and container statuses (pure)."""
from __future__ import annotations

import pytest

from sandbox.node.podstatus import ContainerView, SandboxView, build_status, pod_phase

RUN = {"running": {"startedAt": "t"}}
WAIT = {"waiting": {"reason": "ContainerCreating"}}
BACKOFF = {"waiting": {"reason": "CrashLoopBackOff"}}


def term(code):
    return {"terminated": {"exitCode": code}}


@pytest.mark.parametrize(
    "policy, states, phase",
    [
        ("Always", [(WAIT, {})], "Pending"),
        ("Always", [(RUN, {}), (WAIT, {})], "Pending"),
        ("Always", [(RUN, {}), (RUN, {})], "Running"),
        ("Always", [(BACKOFF, term(1))], "Running"),
        ("Never", [(term(0), {}), (term(0), {})], "Succeeded"),
        ("Never", [(term(0), {}), (term(2), {})], "Failed"),
        ("OnFailure", [(term(0), {})], "Succeeded"),
        ("OnFailure", [(BACKOFF, term(1))], "Running"),
        ("Never", [(RUN, {}), (term(1), {})], "Running"),
        ("Always", [], "Pending"),
    ],
    ids=["creating", "one-not-started", "all-running", "crashloop", "never-all-ok", "never-one-failed",
         "onfailure-ok", "onfailure-restarting", "never-still-running", "no-containers"],
)
def test_phase(policy, states, phase):
    views = [ContainerView(name=f"c{i}", state=s, last_state=last) for i, (s, last) in enumerate(states)]
    assert pod_phase(policy, views) == phase


def _pod(policy="Always"):
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {"restartPolicy": policy}}


def test_running_ready_pod_status():
    sandbox = SandboxView(ready=True, pod_ips=["10.210.1.5"], host_ip="10.200.0.11", start_time="t0")
    views = [ContainerView(name="web", image="nginx", state=RUN, ready=True, restart_count=2, container_id="ambit://9")]
    status = build_status(_pod(), sandbox=sandbox, containers=views, now="t1")
    assert status["phase"] == "Running"
    assert (status["podIP"], status["podIPs"], status["hostIP"]) == ("10.210.1.5", [{"ip": "10.210.1.5"}], "10.200.0.11")
    assert status["startTime"] == "t0"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
                     "ContainersReady": "True", "PodScheduled": "True"}
    cs = status["containerStatuses"][0]
    assert cs == {"name": "web", "image": "nginx", "imageID": "", "ready": True, "restartCount": 2,
                  "started": True, "state": RUN, "lastState": {}, "containerID": "ambit://9"}


def test_sandbox_failure_is_reported_on_the_condition():
    sandbox = SandboxView(ready=False, reason="FailedCreatePodSandBox", message="plugin ambit-cni ADD: agent down")
    status = build_status(_pod(), sandbox=sandbox, containers=[ContainerView(name="web")], now="t1")
    cond = next(c for c in status["conditions"] if c["type"] == "PodReadyToStartContainers")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "FailedCreatePodSandBox",
                                                                 "plugin ambit-cni ADD: agent down")
    assert status["phase"] == "Pending" and "podIP" not in status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "containers with unready status: [web]"


def test_transition_times_survive_while_status_is_unchanged():
    sandbox = SandboxView(ready=True, pod_ips=["10.0.0.1"])
    first = build_status(_pod(), sandbox=sandbox, containers=[ContainerView(name="a", state=RUN)], now="t1")
    second = build_status(_pod(), sandbox=sandbox, containers=[ContainerView(name="a", state=RUN, ready=True)],
                          previous=first, now="t2")
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["PodScheduled"] == "t1" and times["Ready"] == "t2"
    third = build_status(_pod(), sandbox=sandbox, containers=[ContainerView(name="a", state=RUN, ready=True)],
                         previous=second, now="t3")
    assert third == second


def test_a_completed_pod_is_not_ready():
    status = build_status(_pod("Never"), sandbox=SandboxView(ready=True),
                          containers=[ContainerView(name="job", state=term(0))], now="t")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Succeeded" and (ready["status"], ready["reason"]) == ("False", "PodCompleted")
