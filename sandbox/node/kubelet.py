"""The sandbox kubelet of one node: ``python -m sandbox.node.kubelet --node node-1 --index 1``.

Runs inside the node's network namespace and the host's mount namespace (start it with
``kubelet_argv``), and:
- makes sure the node's filesystem is held (``nodefs``): containers and CNI plugins run in it;
- registers the Node (labels, addresses, podCIDR, nodeInfo, Ready) and heartbeats its status;
- watches its Pods (``spec.nodeName``) and hands them to the ``PodRuntime`` (``pods``), after
  cleaning up what a previous kubelet left behind (``PodRuntime.adopt``);
- watches Services and EndpointSlices and keeps the node's ClusterIP rules (``kubeproxy``).

On SIGTERM it stops managing pods but leaves them running, as a real kubelet does; a new
kubelet recreates them cleanly. ``ambit down`` (``underlay.teardown``) removes everything.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import logging
import os
import platform
import faulthandler
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from sandbox.config import SandboxConfig
from sandbox.node.errors import ApiError, NodeFsError
from sandbox.node.pods import PodRef, PodRuntime, RuntimeSettings

log = logging.getLogger("sandbox.node.kubelet")

KUBELET_VERSION = "v1.32.0-ambit"
HEARTBEAT_SECONDS = 10.0
RESYNC_SECONDS = 10.0
MERGE_PATCH = "application/merge-patch+json"
API_TIMEOUT = 10.0
"""seconds a pod worker waits for a token or a ConfigMap/Secret read before retrying later"""
CLONE_NEWNS = 0x00020000


def kubelet_argv(cfg: SandboxConfig, node: str, index: int) -> list[str]:
    """The command that runs node ``index``'s kubelet in its namespace. ``nsenter --net`` keeps the
    host's mount namespace, so the pod namespaces it mounts under /run/netns are seen by all."""
    return ["nsenter", f"--net=/run/netns/{cfg.node_netns(node)}", "--",
            sys.executable, "-m", "sandbox.node.kubelet", "--node", node, "--index", str(index)]


def ensure_host_mount_namespace() -> bool:
    """Rejoin the parent's mount namespace when started through ``ip netns exec``.

    ``ip netns exec`` runs its command in a new mount namespace that is a *slave* of the host's:
    a pod netns this process mounts under /run/netns would stay invisible to every other process
    (``ip netns``, the node agent, ``ambit down``). Must run before any thread starts.
    Returns True when it switched."""
    ppid = os.getppid()
    if ppid <= 1:
        return False
    try:
        mine, theirs = os.stat("/proc/self/ns/mnt"), os.stat(f"/proc/{ppid}/ns/mnt")
    except OSError:
        return False
    if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{ppid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot join the parent's mount namespace ({os.strerror(err)}); "
                               f"start the kubelet with `nsenter --net=...` (kubelet_argv) instead of ip netns exec")
    finally:
        os.close(fd)
    os.chdir("/")
    return True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---- the Node object ---------------------------------------------------------------------------
def node_object(cfg: SandboxConfig, node: str, index: int) -> dict:
    cidr = str(cfg.pod_cidr(index))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch,
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }


def node_status(cfg: SandboxConfig, node: str, index: int, *, now: str, ready_since: str) -> dict:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    resources = {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki", "pods": "110"}

    def cond(ctype: str, status: str, reason: str, message: str, since: str) -> dict:
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since}

    return {
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip(index)},
                      {"type": "Hostname", "address": node}],
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available",
                 ready_since),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", ready_since),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available",
                 ready_since),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status", ready_since),
        ],
        "nodeInfo": {
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": arch,
            "containerRuntimeVersion": "ambit-sandbox://0.1.0",
            "kernelVersion": platform.release(),
            "osImage": "Ambit sandbox (network namespaces)",
            "machineID": f"{cfg.name}-{node}",
            "systemUUID": f"{cfg.name}-{node}",
            "bootID": f"{cfg.name}-{node}",
        },
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    }


# ---- the API behind the pod runtime --------------------------------------------------------
class KubePodApi:
    """``PodApi`` over the official client."""

    def __init__(self, api_client, *, node: str) -> None:
        from kubernetes import client as k8s

        self._k8s = k8s
        self.core = k8s.CoreV1Api(api_client)
        self.node = node
        ca_path = api_client.configuration.ssl_ca_cert
        self._ca = Path(ca_path).read_bytes() if ca_path else b""

    def patch_pod_status(self, ref: PodRef, status: dict) -> None:
        self.core.patch_namespaced_pod_status(ref.name, ref.namespace, {"metadata": {"uid": ref.uid},
                                                                        "status": status},
                                              _content_type=MERGE_PATCH)

    def record_event(self, ref: PodRef, *, type: str, reason: str, message: str) -> None:
        now = _now()
        body = self._k8s.CoreV1Event.model_validate({
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ref.namespace,
                               "name": ref.name, "uid": ref.uid},
            "reason": reason, "message": message[:1024], "type": type,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })
        self.core.create_namespaced_event(ref.namespace, body)

    def finalize_deletion(self, ref: PodRef) -> None:
        from kubernetes.client.exceptions import ApiException

        options = self._k8s.V1DeleteOptions.model_validate({"gracePeriodSeconds": 0,
                                                            "preconditions": {"uid": ref.uid}})
        try:
            self.core.delete_namespaced_pod(ref.name, ref.namespace, grace_period_seconds=0, body=options)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def request_token(self, ref: PodRef, *, service_account: str, expiration_seconds: int,
                      audiences: Sequence[str] = ()) -> tuple[str, float]:
        from kubernetes.client.exceptions import ApiException

        body = self._k8s.AuthenticationV1TokenRequest.model_validate({"spec": {
            "audiences": list(audiences), "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": ref.name, "uid": ref.uid}}})
        try:
            resp = self.core.create_namespaced_service_account_token(service_account, ref.namespace, body,
                                                                     _preload_content=False,
                                                                     _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            raise api_error(exc, f"TokenRequest for {ref.namespace}/{service_account}") from exc
        doc = json.loads(resp.data)
        status = doc.get("status") or {}
        token = status.get("token")
        if not token:
            raise RuntimeError(f"the TokenRequest for {ref.namespace}/{service_account} returned no token")
        return token, _parse_time(status["expirationTimestamp"])

    def ca_bundle(self) -> bytes:
        return self._ca

    def read_config_map(self, namespace: str, name: str) -> dict | None:
        return self._read(self.core.read_namespaced_config_map, namespace, name)

    def read_secret(self, namespace: str, name: str) -> dict | None:
        return self._read(self.core.read_namespaced_secret, namespace, name)

    def _read(self, read_fn, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = read_fn(name, namespace, _preload_content=False, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(exc, f"reading {namespace}/{name}") from exc
        return json.loads(resp.data)


def api_error(exc, what: str) -> ApiError:
    """One line from an ``ApiException``: the status and the API's own message (a Status body)."""
    try:
        message = json.loads(exc.body or "{}").get("message") or ""
    except (TypeError, ValueError):
        message = ""
    return ApiError(f"{what}: the API answered {exc.status} {exc.reason or ''}".rstrip()
                    + (f": {message}" if message else ""), status=exc.status)


# ---- the process ---------------------------------------------------------------------------
class Kubelet:
    def __init__(self, cfg: SandboxConfig, *, node: str, index: int, api_client,
                 settings: RuntimeSettings = RuntimeSettings()) -> None:
        from kubernetes import client as k8s

        from node_agent.discovery.reflector import Reflector
        from sandbox.node.kubeproxy import KubeProxy

        self.cfg, self.node, self.index = cfg, node, index
        self.core = k8s.CoreV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.stop = threading.Event()
        self._pods_changed = threading.Event()
        self.runtime = PodRuntime(cfg=cfg, node=node, host_ip=cfg.node_ip(index),
                                  api=KubePodApi(api_client, node=node), settings=settings)
        self.pods = Reflector(name=f"pods-{node}", list_fn=self.core.list_pod_for_all_namespaces,
                              list_kwargs={"field_selector": f"spec.nodeName={node}"},
                              on_event=lambda _t, _o: self._pods_changed.set())
        self.proxy = KubeProxy(source=self._proxy_source)
        self.services = Reflector(name="services", list_fn=self.core.list_service_for_all_namespaces,
                                  on_event=lambda _t, _o: self.proxy.request_sync())
        self.slices = Reflector(name="endpointslices",
                                list_fn=self.discovery.list_endpoint_slice_for_all_namespaces,
                                on_event=lambda _t, _o: self.proxy.request_sync())
        self._ready_since = _now()

    def _proxy_source(self) -> tuple[list[dict], list[dict]]:
        return list(self.services.store.values()), list(self.slices.store.values())

    def register(self) -> None:
        from kubernetes.client.exceptions import ApiException

        obj = node_object(self.cfg, self.node, self.index)
        try:
            self.core.create_node(self._k8s_node(obj))
            log.info("registered node %s", self.node)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(self.node, {"metadata": {"labels": obj["metadata"]["labels"]},
                                             "spec": obj["spec"]}, _content_type=MERGE_PATCH)
            log.info("node %s already registered; updated it", self.node)
        self.heartbeat()

    def _k8s_node(self, obj: dict):
        from kubernetes import client as k8s

        return k8s.V1Node.model_validate(obj)

    def heartbeat(self) -> None:
        status = node_status(self.cfg, self.node, self.index, now=_now(), ready_since=self._ready_since)
        self.core.patch_node_status(self.node, {"status": status}, _content_type=MERGE_PATCH)

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as exc:
                log.warning("node heartbeat failed: %s", exc)

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self.register()
                break
            except Exception as exc:
                log.warning("cannot register node %s yet (%s); retrying in %.1fs", self.node, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        for r in (self.pods, self.services, self.slices):
            r.start(self.stop)
        self.proxy.start(self.stop)
        while not self.stop.is_set() and not self.pods.synced.wait(0.5):
            pass
        if self.stop.is_set():
            return
        uids = [(p.get("metadata") or {}).get("uid") for p in self.pods.store.values()]
        for line in self.runtime.adopt(u for u in uids if u):
            log.info("leftover pod %s", line)
        self.proxy.request_sync()
        while not self.stop.is_set():
            self._pods_changed.clear()
            self.runtime.sync(list(self.pods.store.values()))
            self._pods_changed.wait(RESYNC_SECONDS)
        self.runtime.shutdown(teardown=False, timeout=5)


def node_api_client(cfg: SandboxConfig):
    """The admin client aimed at the API's address on the bridge (127.0.0.1 is the node's own)."""
    from sandbox.kube import api_client

    return api_client(cfg, server=cfg.api_url_nodes)


def main(cfg: SandboxConfig, node: str, index: int) -> int:
    switched = ensure_host_mount_namespace()  # first: it needs a single-threaded process
    logging.basicConfig(level=os.environ.get("AMBIT_LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s kubelet[{node}] %(levelname)s %(name)s: %(message)s")
    if switched:
        log.info("joined the parent's mount namespace (started through ip netns exec)")
    kubelet = Kubelet(cfg, node=node, index=index, api_client=node_api_client(cfg))
    try:
        holder = kubelet.runtime.node_fs.ensure()  # a holder left by a previous kubelet is reused
    except NodeFsError as exc:
        log.error("%s", exc)
        return 1
    log.info("the node's filesystem is the mount namespace of pid %d (/proc/%d/ns/mnt)", holder, holder)

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping (pods keep running)", signum)
        kubelet.stop.set()
        kubelet._pods_changed.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack into the log
    kubelet.run()
    return 0


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.node.kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="node name, e.g. node-1")
    parser.add_argument("--index", required=True, type=int, help="node index 1..N (address block)")
    args = parser.parse_args(argv)
    nodes = os.environ.get("AMBIT_SANDBOX_NODES")
    cfg = SandboxConfig.from_env(nodes=int(nodes) if nodes else None)
    if args.node != cfg.node_name(args.index):
        parser.error(f"--node {args.node} does not match --index {args.index} (expected {cfg.node_name(args.index)})")
    return main(cfg, args.node, args.index)


if __name__ == "__main__":
    sys.exit(_cli())
