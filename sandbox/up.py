"""``ambit up`` and ``ambit down``: build the sandbox cluster, and remove every trace of it.

up:   PKI + kubeconfig -> underlay bridge and node namespaces -> API server -> controllers ->
      one kubelet per node (inside its node namespace; it holds the node's filesystem, nodefs) ->
      nodes Ready -> demo app (optional)
down: stop every member process -> delete namespaces and links -> delete the state directory.
      Idempotent, and works after a crash: it finds processes by environment marker and
      namespaces/links by name prefix, not from files alone.
"""
from __future__ import annotations

import logging
import shutil
import ssl
import time
import urllib.request
from pathlib import Path

import yaml

from sandbox import procs
from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

class SandboxError(Exception):
    """the sandbox could not be brought up; the message says what to do"""


def _say(msg: str) -> None:
    print(f"ambit: {msg}", flush=True)


def is_up(cfg: SandboxConfig) -> bool:
    return procs.pid_of(cfg, "apiserver") is not None


def up(cfg: SandboxConfig, *, demo: bool, mesh: bool = True, value_files: list[str] = (),
       set_values: list[str] = ()) -> None:
    from sandbox.api.pki import ensure_pki, write_kubeconfig
    from sandbox.node import cni as node_cni
    from sandbox.node import underlay
    from sandbox.kube import api_client
    from sandbox.node.kubelet import kubelet_argv

    started = time.monotonic()
    _check_prerequisites()
    values, rendered = _chart(cfg, value_files=value_files, set_values=set_values, render=mesh)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o700)
    cfg.values_path.write_text("# Ambit's chart values on this sandbox: ambit install -f <this file>, "
                               "helm install -f <this file>\n" + yaml.safe_dump(values, sort_keys=False))
    ensure_pki(cfg)
    write_kubeconfig(cfg)

    underlay.create_underlay(cfg)
    for i in range(1, cfg.nodes + 1):
        underlay.create_node(cfg, i)
        node_cni.default_conflist(cfg, i)
    _say(f"underlay {cfg.bridge} {cfg.underlay} with {cfg.nodes} node namespaces")

    if procs.pid_of(cfg, "apiserver") is None:
        procs.start(cfg, name="apiserver",
                    argv=procs.python_argv("sandbox.api", "--bind", "127.0.0.1", "--bind", cfg.host_ip))
    _wait_api(cfg, timeout=20)
    _say(f"API server ready at {cfg.api_url_host}")

    if procs.pid_of(cfg, "controllers") is None:
        procs.start(cfg, name="controllers", argv=procs.python_argv("sandbox.controllers"))
    for i in range(1, cfg.nodes + 1):
        node = cfg.node_name(i)
        if procs.pid_of(cfg, f"kubelet-{node}") is None:
            procs.start(cfg, name=f"kubelet-{node}", argv=kubelet_argv(cfg, node, i))

    api = api_client(cfg)
    _wait_nodes_ready(cfg, api, timeout=30)
    _say(f"{cfg.nodes} nodes Ready")

    if rendered is not None:
        from ambitctl.errors import AmbitctlError
        from ambitctl.install import install
        from sandbox import mesh as ambit_mesh

        try:
            install(api, rendered, namespace=ambit_mesh.NAMESPACE, release="ambit", wait=90, say=log.info)
        except AmbitctlError as exc:
            raise SandboxError(f"installing Ambit's chart: {exc}") from exc
        _say("ambit installed from its Helm chart: the identity CA, "
             "a node agent and ambit-cni on each node")
    if demo:
        from sandbox.demo import manifests

        apply_objects(api, manifests.load())
        _wait_pods_ready(api, namespace="demo", timeout=60)
        _say("demo application Running in namespace demo")
        if mesh:
            enrol_namespace(api, "demo")
            _say("namespace demo enrolled (ambit.dev/dataplane-mode=ambient): its traffic now runs over mTLS")
        if rendered is not None and any(m.kind == "GatewayClass" for m in rendered.manifests):
            _demo_waypoint(api)  # the chart's waypoint.enabled (on by default)
    _say(f"sandbox up in {time.monotonic() - started:.1f}s; kubeconfig: {cfg.kubeconfig_path}")


def down(cfg: SandboxConfig) -> list[str]:
    """Remove everything the sandbox made; returns a description of what was removed."""
    from sandbox.node import underlay

    removed: list[str] = []
    pids = procs.members(cfg)
    if pids:
        procs.stop_pids(pids)
        removed.append(f"{len(pids)} processes")
    removed.extend(underlay.teardown(cfg))
    # processes inside namespaces are killed by teardown; catch stragglers started meanwhile
    late = procs.members(cfg)
    if late:
        procs.stop_pids(late, grace=1)
        removed.append(f"{len(late)} late processes")
    if cfg.state_dir.exists():
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        removed.append(str(cfg.state_dir))
    try:
        cfg.base_dir.rmdir()  # only when no other sandbox lives there
    except OSError:
        pass
    return removed


# ---- helpers ---------------------------------------------------------------------------
def _chart(cfg: SandboxConfig, *, value_files: list[str], set_values: list[str], render: bool):
    """The sandbox's values for Ambit's chart, then the user's ``-f`` files and ``--set``s, and the
    chart rendered with them (unless ``render`` is off: ``--no-mesh``). A bad value stops ``up``
    here, before anything is built."""
    from ambitctl import chart
    from ambitctl.errors import ChartError
    from sandbox import mesh as ambit_mesh

    try:
        values = chart.values(files=value_files, sets=set_values, base=ambit_mesh.values(cfg))
        return values, chart.render(values, namespace=ambit_mesh.NAMESPACE) if render else None
    except ChartError as exc:
        raise SandboxError(str(exc)) from exc


def _check_prerequisites() -> None:
    missing = [tool for tool in ("ip", "iptables", "iptables-restore", "nsenter") if shutil.which(tool) is None]
    if not Path("/usr/lib/cni/ptp").exists():  # a node's /opt/cni/bin is its own directory: not the host's
        missing.append("CNI reference plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
    if missing:
        raise SandboxError(f"missing {', '.join(missing)}; run `make deps` (as root) first")


def _wait_api(cfg: SandboxConfig, *, timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(cfg.pki_dir / "ca.crt"))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if procs.pid_of(cfg, "apiserver") is None:
            raise SandboxError(f"the API server exited; see {cfg.log_dir / 'apiserver.log'}")
        try:
            with urllib.request.urlopen(f"{cfg.api_url_host}/readyz", context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # not listening yet
            last = exc
        time.sleep(0.1)
    raise SandboxError(f"the API server did not become ready in {timeout:.0f}s ({last}); "
                       f"see {cfg.log_dir / 'apiserver.log'}")


def _wait_nodes_ready(cfg: SandboxConfig, api, *, timeout: float) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    want = {cfg.node_name(i) for i in range(1, cfg.nodes + 1)}
    ready: set[str] = set()
    while time.monotonic() < deadline:
        ready = {
            n.metadata.name for n in core.list_node().items
            if n.status and any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
        }
        if want <= ready:
            return
        for i in range(1, cfg.nodes + 1):
            if procs.pid_of(cfg, f"kubelet-{cfg.node_name(i)}") is None:
                raise SandboxError(f"the kubelet of {cfg.node_name(i)} exited; "
                                   f"see {cfg.log_dir / ('kubelet-' + cfg.node_name(i) + '.log')}")
        time.sleep(0.2)
    raise SandboxError(f"nodes {sorted(want - ready)} not Ready after {timeout:.0f}s; see {cfg.log_dir}")


def _demo_waypoint(api) -> None:
    """The demo's L7: a waypoint for namespace demo, bound to the whole namespace (``ambit waypoint
    apply -n demo --enroll-namespace``), so its request metrics show each service's success rate."""
    from ambitctl import waypoint
    from ambitctl.apply import Applier
    from ambitctl.errors import AmbitctlError

    try:
        waypoint.apply(Applier(api, field_manager=waypoint.FIELD_MANAGER), name="waypoint", namespace="demo",
                       enroll_namespace=True, wait=60)
    except AmbitctlError as exc:
        raise SandboxError(f"the demo's waypoint: {exc}") from exc
    _say("waypoint demo/waypoint ready; namespace demo uses it (ambit.dev/use-waypoint=waypoint)")


def enrol_namespace(api, namespace: str) -> None:
    from kubernetes import client

    client.CoreV1Api(api).patch_namespace(
        namespace, {"metadata": {"labels": {"ambit.dev/dataplane-mode": "ambient"}}},
        _content_type="application/merge-patch+json")


def _wait_pods_ready(api, *, namespace: str, timeout: float, expected: int = 1) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace).items
        pending = [
            p.metadata.name for p in pods
            if not p.status or p.status.phase != "Running"
            or not any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        ]
        if len(pods) >= expected and not pending:
            return
        time.sleep(0.25)
    raise SandboxError(f"pods in {namespace} not ready after {timeout:.0f}s: {', '.join(pending) or 'too few created'}; "
                       f"try `kubectl get pods -n {namespace}` and `ambit sandbox logs {namespace}/<pod>`")


def apply_objects(api, objects: list[dict]) -> None:
    """Create every object, in order; objects that exist already are left alone."""
    from kubernetes import utils
    from kubernetes.utils import FailToCreateError

    for doc in objects:
        try:
            utils.create_from_dict(api, doc)
        except FailToCreateError as exc:
            if all(getattr(e, "status", None) == 409 for e in exc.api_exceptions):
                continue
            raise
