"""Readiness and liveness probes, as the kubelet's prober runs them.

httpGet (success: status 200-399), tcpSocket (success: connect) and exec (success: exit 0)
probes with ``initialDelaySeconds``, ``periodSeconds``, ``timeoutSeconds``, ``successThreshold``
and ``failureThreshold``. Probes are sent from the node's network namespace (where the kubelet
runs) to the pod IP, so they are not captured by in-pod redirection of outbound traffic.
"""
from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from typing import Callable

from sandbox.node.errors import ContainerError

USER_AGENT = "kube-probe/1.32"

ExecFn = Callable[[list[str], float], tuple[bool, str]]


@dataclass(frozen=True)
class Probe:
    kind: str
    """http, tcp or exec"""
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def resolve_port(port: int | str, container: dict) -> int:
    """A probe port given by number, numeric string, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ContainerError(f"probe port {port!r} is not a number or a named port of container "
                         f"{container.get('name')!r}", reason="CreateContainerConfigError")


def parse_probe(spec: dict, container: dict, *, pod_ip: str) -> Probe:
    timing = dict(
        initial_delay=float(spec.get("initialDelaySeconds") or 0),
        period=float(spec.get("periodSeconds") or 10),
        timeout=float(spec.get("timeoutSeconds") or 1),
        success_threshold=int(spec.get("successThreshold") or 1),
        failure_threshold=int(spec.get("failureThreshold") or 3),
    )
    if spec.get("httpGet") is not None:
        h = spec["httpGet"]
        headers = tuple((x["name"], x.get("value", "")) for x in h.get("httpHeaders") or [])
        return Probe(kind="http", host=h.get("host") or pod_ip, port=resolve_port(h.get("port"), container),
                     path=h.get("path") or "/", scheme=(h.get("scheme") or "HTTP").upper(), headers=headers,
                     **timing)
    if spec.get("tcpSocket") is not None:
        t = spec["tcpSocket"]
        return Probe(kind="tcp", host=t.get("host") or pod_ip, port=resolve_port(t.get("port"), container),
                     **timing)
    if spec.get("exec") is not None:
        return Probe(kind="exec", command=tuple(spec["exec"].get("command") or ()), **timing)
    raise ContainerError(f"container {container.get('name')!r} has a probe with no httpGet, tcpSocket or exec; "
                         "grpc probes are not supported by the sandbox kubelet")


def run_probe(probe: Probe, *, exec_fn: ExecFn | None = None) -> tuple[bool, str]:
    """One probe attempt: (success, message for the container status/events)."""
    if probe.kind == "http":
        return _http(probe)
    if probe.kind == "tcp":
        return _tcp(probe)
    if probe.kind == "exec":
        if exec_fn is None:
            return False, "exec probes need an exec function"
        return exec_fn(list(probe.command), probe.timeout)
    return False, f"unknown probe kind {probe.kind}"


def _http(probe: Probe) -> tuple[bool, str]:
    if probe.scheme == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates either
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            probe.host, probe.port, timeout=probe.timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(probe.host, probe.port, timeout=probe.timeout)
    url = f"{probe.scheme.lower()}://{probe.host}:{probe.port}{probe.path}"
    try:
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **dict(probe.headers)}
        conn.request("GET", probe.path, headers=headers)
        resp = conn.getresponse()
        resp.read(10 * 1024)
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"Get \"{url}\": {_describe(exc)}"
    finally:
        conn.close()


def _tcp(probe: Probe) -> tuple[bool, str]:
    try:
        with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
            return True, ""
    except OSError as exc:
        return False, f"dial tcp {probe.host}:{probe.port}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "i/o timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    return str(exc) or type(exc).__name__


class ProbeTracker:
    """Applies a probe's timing and thresholds to its results.

    A readiness tracker starts failed (not ready until it succeeds), a liveness tracker starts
    successful (alive until it fails ``failureThreshold`` times in a row)."""

    def __init__(self, probe: Probe, *, started_at: float, initially_ok: bool) -> None:
        self.probe = probe
        self.ok = initially_ok
        self.message = ""
        self._next = started_at + probe.initial_delay
        self._successes = 0
        self._failures = 0

    def due(self, now: float) -> bool:
        return now >= self._next

    def record(self, success: bool, now: float, message: str = "") -> bool:
        """Feed one result; returns True when ``ok`` changed."""
        self._next = now + self.probe.period
        before = self.ok
        if success:
            self._successes += 1
            self._failures = 0
            if self._successes >= self.probe.success_threshold:
                self.ok = True
                self.message = ""
        else:
            self._failures += 1
            self._successes = 0
            self.message = message
            if self._failures >= self.probe.failure_threshold:
                self.ok = False
        return before != self.ok
