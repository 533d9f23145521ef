"""All controllers in one process: shared reflectors, one loop per controller, until SIGTERM.

One reflector per kind the controllers read (``LIST_CALLS``: Pods, Nodes, Services,
EndpointSlices, Deployments, ReplicaSets, DaemonSets, Namespaces, Secrets, ConfigMaps,
ServiceAccounts, RoleBindings, and the CRD kinds of ``CUSTOM_KINDS``: Gateways) feeds every
controller that reads that kind. Workers start once every reflector has completed its first list
(the garbage collector must never judge an owner missing because its kind has not been listed
yet); that moment is readiness. A CRD kind whose CRD is not installed lists as empty (and its
watch is retried every few seconds), so readiness never waits for an optional CRD. Every
``resync`` seconds every key is enqueued again, to recover from anything missed.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from node_agent.discovery.reflector import Reflector
from sandbox.config import ConfigError, SandboxConfig
from sandbox.controllers.applier import Applier
from sandbox.controllers.daemonset import DaemonSetController
from sandbox.controllers.deployment import DeploymentController
from sandbox.controllers.endpointslice import EndpointSliceController
from sandbox.controllers.errors import StartupError
from sandbox.controllers.garbagecollector import GarbageCollector
from sandbox.controllers.namespace import NamespaceContent, NamespaceController
from sandbox.controllers.objects import CUSTOM_KINDS, CustomKind, Kind
from sandbox.controllers.queue import WorkQueue
from sandbox.controllers.replicaset import ReplicaSetController
from sandbox.controllers.runtime import Applies, Cache, Controller, ControllerLoop
from sandbox.controllers.scheduler import Scheduler

log = logging.getLogger("sandbox.controllers")

# kind -> (API class, list-for-all-namespaces method)
LIST_CALLS: dict[Kind, tuple[type, str]] = {
    "Pod": (k8s.CoreV1Api, "list_pod_for_all_namespaces"),
    "Node": (k8s.CoreV1Api, "list_node"),
    "Service": (k8s.CoreV1Api, "list_service_for_all_namespaces"),
    "EndpointSlice": (k8s.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces"),
    "Deployment": (k8s.AppsV1Api, "list_deployment_for_all_namespaces"),
    "ReplicaSet": (k8s.AppsV1Api, "list_replica_set_for_all_namespaces"),
    "DaemonSet": (k8s.AppsV1Api, "list_daemon_set_for_all_namespaces"),
    "Namespace": (k8s.CoreV1Api, "list_namespace"),
    "Secret": (k8s.CoreV1Api, "list_secret_for_all_namespaces"),
    "ConfigMap": (k8s.CoreV1Api, "list_config_map_for_all_namespaces"),
    "ServiceAccount": (k8s.CoreV1Api, "list_service_account_for_all_namespaces"),
    "RoleBinding": (k8s.RbacAuthorizationV1Api, "list_role_binding_for_all_namespaces"),
}
UNSERVED_RETRY = 5.0
"""seconds between watches of a CRD kind whose CRD is not installed"""


class _Unserved:
    """The answer for a CRD kind the API does not serve (yet): an empty list, or a watch that
    ends at once; the reflector lists or watches again and finds the kind once its CRD is there."""

    status = 200

    def __init__(self, kind: str) -> None:
        self.data = b'{"kind":"%sList","items":[],"metadata":{"resourceVersion":""}}' % kind.encode()

    def stream(self, amt=None, decode_content=False):  # noqa: ARG002 - urllib3's signature
        return iter(())

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def custom_list(api: k8s.ApiClient, kind: str, custom: CustomKind, *, retry: float = UNSERVED_RETRY) -> Callable[..., Any]:
    """A reflector's list-and-watch call for a CRD kind, tolerant of its CRD being absent."""
    objects = k8s.CustomObjectsApi(api)

    def list_or_watch(**kwargs: Any) -> Any:
        try:
            return objects.list_cluster_custom_object(custom.group, custom.version, custom.plural, **kwargs)
        except ApiException as exc:
            if exc.status != 404:
                raise
        if kwargs.get("watch"):
            time.sleep(retry)
        return _Unserved(kind)

    return list_or_watch

# debounce per controller: the cluster-wide passes wait a little longer to batch bursts
_DEBOUNCE = {"scheduler": 0.05, "garbagecollector": 0.3}


def default_controllers(*, content: NamespaceContent) -> list[Controller]:
    """Every controller; ``content`` reads namespaces live for the namespace controller."""
    return [
        Scheduler(),
        DeploymentController(),
        ReplicaSetController(),
        DaemonSetController(),
        EndpointSliceController(),
        GarbageCollector(),
        NamespaceController(content),
    ]


class ControllerManager:
    def __init__(
        self,
        *,
        list_fns: Mapping[Kind, Callable[..., Any]],
        applier: Applies,
        controllers: list[Controller],
        resync: float = 60.0,
    ) -> None:
        needed = {kind for c in controllers for kind in c.kinds}
        missing = needed - set(list_fns)
        if missing:
            raise StartupError(f"BUG: no list call for {sorted(missing)}")
        self.reflectors: dict[Kind, Reflector] = {
            kind: Reflector(name=kind, list_fn=list_fns[kind], on_event=self._handler(kind))
            for kind in sorted(needed)
        }
        self.cache = Cache(self.reflectors)
        self.loops = [
            ControllerLoop(c, store=self.cache, applier=applier, queue=WorkQueue(debounce=_DEBOUNCE.get(c.name, 0.05)))
            for c in controllers
        ]
        self.ready = threading.Event()
        self._resync = resync
        self._threads: list[threading.Thread] = []

    @classmethod
    def for_sandbox(cls, cfg: SandboxConfig, *, server: str | None = None) -> "ControllerManager":
        from sandbox.kube import api_client

        if not cfg.kubeconfig_path.exists():
            raise StartupError(f"no kubeconfig at {cfg.kubeconfig_path}; start the sandbox API first (ambit up)")
        # one client per reflector: each holds a long watch connection; one more for writes
        list_fns: dict[Kind, Callable[..., Any]] = {}
        for kind, (api_cls, method) in LIST_CALLS.items():
            list_fns[kind] = getattr(api_cls(api_client(cfg, server=server)), method)
        for kind, custom in CUSTOM_KINDS.items():
            list_fns[kind] = custom_list(api_client(cfg, server=server), kind, custom)
        applier = Applier(api_client(cfg, server=server))
        return cls(list_fns=list_fns, applier=applier, controllers=default_controllers(content=applier))

    def _handler(self, kind: Kind) -> Callable[[str, dict], None]:
        def on_event(etype: str, obj: dict) -> None:
            for loop in self.loops:
                loop.on_event(kind, obj, etype=etype)

        return on_event

    def start(self, stop: threading.Event) -> None:
        for reflector in self.reflectors.values():
            self._threads.append(reflector.start(stop))
        for loop in self.loops:
            t = threading.Thread(target=loop.run, args=(stop,), kwargs={"start": self.ready},
                                 name=f"controller-{loop.name}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._supervise, args=(stop,), name="controller-manager", daemon=True)
        t.start()
        self._threads.append(t)

    def _supervise(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if all(r.synced.is_set() for r in self.reflectors.values()):
                break
            stop.wait(0.05)
        if stop.is_set():
            return
        log.info("ready: %d caches synced (%s)", len(self.reflectors),
                 ", ".join(f"{len(r.store)} {k}" for k, r in sorted(self.reflectors.items())))
        self.ready.set()
        while not stop.wait(self._resync):
            for loop in self.loops:
                loop.resync()

    def join(self, timeout: float = 5.0) -> None:
        for loop in self.loops:
            loop.queue.close()
        for t in self._threads:
            if t.name.startswith("controller"):
                t.join(timeout)


def run(cfg: SandboxConfig, *, stop: threading.Event, ready_file: Path | None = None) -> None:
    """Run every controller against the sandbox until ``stop`` is set."""
    manager = ControllerManager.for_sandbox(cfg)
    manager.start(stop)
    while not stop.is_set() and not manager.ready.wait(0.2):
        pass
    if manager.ready.is_set() and ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.write_text(f"{os.getpid()}\n")
    try:
        stop.wait()
    finally:
        manager.join()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def main(cfg: SandboxConfig | None = None, *, ready_file: Path | None = None) -> int:
    """``python -m sandbox.controllers``: config from the environment, stop on SIGTERM/SIGINT."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = cfg or SandboxConfig.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        run(cfg, stop=stop, ready_file=ready_file)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0
