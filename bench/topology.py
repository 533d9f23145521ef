"""The benchmark's cluster: its own sandbox, the bench pods, and where everything lives.

- ``ambit up --nodes 2 --no-demo`` / ``ambit down`` on a sandbox of the rig's own name and index,
  with its state under the rig's work directory (the demo's and the tests' sandboxes are never
  touched).
- Namespaces: ``bench-direct`` (not enrolled) and ``bench-mesh`` (``ambit.dev/dataplane-mode=
  ambient``), each with ``client`` on node-1, ``server`` on node-2 and ``server-local`` on node-1;
  servers run nginx (a tiny static response on 8080) and ``iperf3 -s`` (5201) as pod processes.
  ``bench-scale`` (enrolled) holds the tiny ``sleep`` pods of the memory-per-pod figure.
- ``bench-waypoint`` (enrolled, bound to its waypoint with ``ambit.dev/use-waypoint=waypoint``):
  ``client`` on node-1, ``server`` on node-2 (the same nginx) and a Service ``server`` (8080) in
  front of it; the waypoint is the Gateway ``bench-waypoint/waypoint`` (``ambit waypoint apply -n
  bench-waypoint --enroll-namespace``, through ``ambitctl.waypoint``), on whichever node the
  scheduler puts it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import nginx
from bench.procs import ToolError, wait_until
from sandbox.config import SandboxConfig

NS_DIRECT = "bench-direct"
NS_MESH = "bench-mesh"
NS_SCALE = "bench-scale"
NS_WAYPOINT = "bench-waypoint"
WAYPOINT = "waypoint"
"""the bench's Gateway (class ambit-waypoint) in bench-waypoint"""
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""the label the waypoint controller puts on a waypoint's pods"""
SERVICE = "server"
"""the Service in front of bench-waypoint/server: waypoints serve Services, not pod IPs"""
HTTP_PORT = 8080
IPERF_PORT = 5201
ENROL_LABEL = {"ambit.dev/dataplane-mode": "ambient"}
AMBIT = str(Path(sys.executable).parent / "ambit")


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    node: str
    netns: str
    """path of the pod's network namespace (``/run/netns/...``)"""


def sum_counter(exposition: str, name: str, **labels: str) -> float:
    """Sum of the series of counter ``name`` whose labels include ``labels``, in a Prometheus text page."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


class Topology:
    def __init__(self, *, name: str, index: int, workdir: Path) -> None:
        self.workdir = workdir
        self.cfg = SandboxConfig(name=name, index=index, nodes=2, base_dir=workdir / "sandbox")
        self._api = None

    # ---- sandbox --------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "AMBIT_SANDBOX": self.cfg.name, "AMBIT_SANDBOX_INDEX": str(self.cfg.index),
                "AMBIT_SANDBOX_DIR": str(self.cfg.base_dir)}

    def up(self, *, attempts: int = 2) -> None:
        """``ambit up``; a failed attempt is torn down and tried again (start-up races happen)."""
        for attempt in range(1, attempts + 1):
            proc = subprocess.run([AMBIT, "up", "--nodes", "2", "--no-demo"], env=self.env, capture_output=True,
                                  text=True, timeout=240)
            if proc.returncode == 0:
                return
            failure = f"ambit up failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            if attempt < attempts:
                print(f"bench: {failure.strip().splitlines()[-1]}; tearing down and trying again", flush=True)
                self.down()
        raise ToolError(failure)

    def down(self) -> str:
        proc = subprocess.run([AMBIT, "down"], env=self.env, capture_output=True, text=True, timeout=120)
        return (proc.stdout + proc.stderr).strip()

    @property
    def api(self):
        if self._api is None:
            from sandbox.kube import api_client

            self._api = api_client(self.cfg)
        return self._api

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def node_netns(self, node: str) -> str:
        return f"/run/netns/{self.cfg.node_netns(node)}"

    def node_ip(self, node: str) -> str:
        return self.cfg.node_ip(int(node.rsplit("-", 1)[1]))

    # ---- objects --------------------------------------------------------------------------
    def create_namespace(self, name: str, *, enrolled: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"name": name, "labels": dict(ENROL_LABEL) if enrolled else {}}}
        try:
            self.core().create_namespace(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def create_pod(self, namespace: str, name: str, *, node: str, containers: list[dict]) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                                "labels": {"app": name}},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                         "containers": [{"image": "bench", **c} for c in containers]}}
        try:
            self.core().create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def create_bench_pods(self) -> None:
        """client/server/server-local in bench-direct and bench-mesh (enrolled)."""
        for ns, enrolled in ((NS_DIRECT, False), (NS_MESH, True)):
            self.create_namespace(ns, enrolled=enrolled)
            self.create_pod(ns, "client", node="node-1", containers=[{"name": "sleep", "command": ["sleep", "infinity"]}])
            for name, node in (("server", "node-2"), ("server-local", "node-1")):
                prefix = self.workdir / "http" / f"{ns}-{name}"
                conf = nginx.write_http_server(prefix, port=HTTP_PORT)
                self.create_pod(ns, name, node=node, containers=[
                    {"name": "http", "command": ["nginx", "-p", str(prefix), "-c", str(conf), "-e", "stderr"]},
                    {"name": "iperf", "command": ["iperf3", "-s", "-p", str(IPERF_PORT)]},
                ])

    def create_waypoint_pods(self) -> None:
        """client and server in bench-waypoint (enrolled), and the Service the waypoint serves."""
        from kubernetes.client.exceptions import ApiException

        self.create_namespace(NS_WAYPOINT, enrolled=True)
        self.create_pod(NS_WAYPOINT, "client", node="node-1",
                        containers=[{"name": "sleep", "command": ["sleep", "infinity"]}])
        prefix = self.workdir / "http" / f"{NS_WAYPOINT}-server"
        conf = nginx.write_http_server(prefix, port=HTTP_PORT)
        self.create_pod(NS_WAYPOINT, "server", node="node-2", containers=[
            {"name": "http", "command": ["nginx", "-p", str(prefix), "-c", str(conf), "-e", "stderr"]}])
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS_WAYPOINT},
                "spec": {"selector": {"app": "server"},
                         "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}]}}
        try:
            self.core().create_namespaced_service(NS_WAYPOINT, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def service_ip(self, namespace: str, name: str) -> str:
        return self.core().read_namespaced_service(name, namespace).spec.cluster_ip

    def apply_waypoint(self, *, timeout: float) -> None:
        """``ambit waypoint apply -n bench-waypoint --enroll-namespace``, waiting until it is Programmed."""
        from ambitctl import waypoint
        from ambitctl.apply import Applier, Ref
        from ambitctl.errors import AmbitctlError

        applier = Applier(self.api, field_manager=waypoint.FIELD_MANAGER)
        try:
            if applier.get(Ref(waypoint.GATEWAY_API, "GatewayClass", None, waypoint.GATEWAY_CLASS)) is None:
                raise ToolError(f"no GatewayClass {waypoint.GATEWAY_CLASS}: the chart installs it with "
                                "waypoint.enabled=true (deploy/charts/ambit/values.yaml)")
            waypoint.apply(applier, name=WAYPOINT, namespace=NS_WAYPOINT, enroll_namespace=True, wait=timeout)
        except AmbitctlError as exc:
            raise ToolError(f"waypoint {NS_WAYPOINT}/{WAYPOINT}: {exc}") from exc

    def waypoint_pod(self) -> Pod:
        pods = [p for p in self.core().list_namespaced_pod(
                    NS_WAYPOINT, label_selector=f"{GATEWAY_NAME_LABEL}={WAYPOINT}").items
                if not p.metadata.deletion_timestamp and p.status.phase == "Running"]
        if len(pods) != 1:
            raise ToolError(f"expected one running waypoint pod in {NS_WAYPOINT}, found {len(pods)}")
        return self.pod(NS_WAYPOINT, pods[0].metadata.name)

    def create_scale_pods(self, count: int) -> None:
        self.create_namespace(NS_SCALE, enrolled=True)
        for i in range(count):
            self.create_pod(NS_SCALE, f"idle-{i:03d}", node=f"node-{1 + i % 2}",
                            containers=[{"name": "sleep", "command": ["sleep", "3600"]}])

    def wait_ready(self, namespace: str, *, count: int, timeout: float) -> None:
        def ready() -> bool:
            pods = self.core().list_namespaced_pod(namespace).items
            return len(pods) >= count and all(
                p.status.phase == "Running"
                and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                for p in pods)

        wait_until(ready, timeout=timeout, interval=0.5, what=f"{count} pods Ready in namespace {namespace}")

    def pods(self, namespace: str) -> list[Pod]:
        out = []
        for p in self.core().list_namespaced_pod(namespace).items:
            out.append(Pod(namespace=namespace, name=p.metadata.name, uid=p.metadata.uid, ip=p.status.pod_ip or "",
                           node=p.spec.node_name, netns=f"/run/netns/{self.cfg.pod_netns(p.metadata.uid)}"))
        return sorted(out, key=lambda p: p.name)

    def pod(self, namespace: str, name: str) -> Pod:
        for p in self.pods(namespace):
            if p.name == name:
                return p
        raise ToolError(f"pod {namespace}/{name} not found")

    # ---- the node agents ------------------------------------------------------------------
    def agent_pids(self) -> dict[str, int]:
        """node name -> pid of that node's agent process: ``ambit-agent node-agent`` (the argument, not the
        installer's ``--uninstall-if-daemonset-gone=ambit-node-agent``) whose pod talks to our API."""
        marker = f"KUBERNETES_SERVICE_HOST={self.cfg.host_ip}".encode()
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"node-agent" not in cmdline:
                    continue
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker not in env:
                continue
            node = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"NODE_NAME=")), "")
            if node:
                found[node] = int(entry.name)
        return found

    def waypoint_pid(self, pod: Pod) -> int:
        """pid of the ``ambit-waypoint proxy`` process of ``pod`` (a pod process of our sandbox)."""
        marker = f"KUBERNETES_SERVICE_HOST={self.cfg.host_ip}".encode()
        want = {f"POD_NAMESPACE={pod.namespace}".encode(), f"POD_NAME={pod.name}".encode(), marker}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"proxy" not in cmdline or not any(a.endswith(b"ambit-waypoint") for a in cmdline):
                    continue
                env = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                return int(entry.name)
        raise ToolError(f"no ambit-waypoint process found for pod {pod.namespace}/{pod.name}")

    def pod_metric(self, pod: Pod, name: str, **labels: str) -> float:
        """Sum of a counter on a pod's :15020/metrics (read inside its network namespace)."""
        proc = subprocess.run(["nsenter", f"--net={pod.netns}", "--", "curl", "-sS", "-m", "5",
                               "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, timeout=15)
        if proc.returncode != 0:
            raise ToolError(f"metrics of {pod.namespace}/{pod.name}: {proc.stderr.strip()[:200]}")
        return sum_counter(proc.stdout, name, **labels)

    def agent_metric(self, node: str, name: str, **labels: str) -> float:
        """Sum of a counter on a node agent's :15020/metrics over series matching ``labels``."""
        url = f"http://{self.node_ip(node)}:15020/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return sum_counter(resp.read().decode(), name, **labels)

    def config_dump(self, node: str) -> dict:
        proc = subprocess.run(["nsenter", f"--net={self.node_netns(node)}", "--", "curl", "-s", "-m", "10",
                               "http://127.0.0.1:15000/config_dump"], capture_output=True, timeout=15)
        return json.loads(proc.stdout or b"{}")

    def settle(self, seconds: float = 2.0) -> None:
        time.sleep(seconds)
