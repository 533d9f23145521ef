"""Objects onto a cluster and off it again, with the official client's DynamicClient.

- ``connect``: an API client from ``--kubeconfig``/``--context`` (in-cluster config inside a pod)
- ``Applier.apply``: server-side apply under one field manager; says created/configured/unchanged
  (by resourceVersion), so a second run that changes nothing reports nothing changed
- ``Applier.prune``/``Applier.owned``: objects carrying the release's labels that the rendering no
  longer has (``kubectl apply --prune -l``, with a fixed list of kinds)
- ``Applier.delete``: background propagation (the garbage collector removes ReplicaSets and pods),
  then waiting until the object is gone
- ``ready``: the readiness rules ``helm --wait`` applies to Deployments and DaemonSets;
  ``established``: a CustomResourceDefinition whose kinds are served (what Helm waits for)
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ambitctl.chart import Manifest
from ambitctl.errors import ClusterError

FIELD_MANAGER = "ambit"
PRUNE_KINDS = (
    ("v1", "ServiceAccount"), ("v1", "Secret"), ("v1", "ConfigMap"), ("v1", "Service"),
    ("apps/v1", "DaemonSet"), ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
)
"""every kind the chart renders: what pruning and uninstall look for"""


def connect(*, kubeconfig: str | None = None, context: str | None = None):
    """An ``ApiClient``: ``--kubeconfig``/``KUBECONFIG``/``~/.kube/config``, else in-cluster."""
    import os

    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kubeconfig or os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
            return config.new_client_from_config(config_file=kubeconfig, context=context)
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()
    except (ConfigException, OSError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterError(f"cannot load the kubeconfig {where}: {exc}; pass --kubeconfig FILE "
                           "(for the sandbox: --kubeconfig \"$(ambit sandbox kubeconfig)\")") from exc


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    @classmethod
    def of(cls, obj: dict) -> "Ref":
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


class Applier:
    def __init__(self, api_client, *, field_manager: str = FIELD_MANAGER) -> None:
        from kubernetes.dynamic import DynamicClient

        self._dyn = DynamicClient(api_client)
        self._field_manager = field_manager

    def _resource(self, api_version: str, kind: str):
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self._dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            self._dyn.resources.invalidate_cache()  # discovery is cached on disk: ask again, as kubectl does
        try:
            return self._dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError as exc:
            raise ClusterError(f"the cluster does not serve {kind} in {api_version}; is it Kubernetes 1.28 or newer?") from exc

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise ClusterError(f"{what}: HTTP {exc.status} {_reason(exc)}") from exc
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"{what}: the API server did not answer ({exc}); is the cluster up?") from exc

    def get(self, ref: Ref) -> dict | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(ref.api_version, ref.kind)
        try:
            return self._call(f"reading {ref}", res.get, name=ref.name, namespace=ref.namespace).to_dict()
        except ClusterError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return None
            raise

    def apply(self, obj: dict) -> str:
        """Server-side apply ``obj``; returns ``created``, ``configured`` or ``unchanged``."""
        ref = Ref.of(obj)
        before = self.get(ref)
        res = self._resource(ref.api_version, ref.kind)
        after = self._call(f"applying {ref}", self._dyn.server_side_apply, res, body=obj, name=ref.name,
                           namespace=ref.namespace, field_manager=self._field_manager, force_conflicts=True)
        if before is None:
            return "created"
        rv = after.metadata.resourceVersion
        return "unchanged" if rv == before["metadata"].get("resourceVersion") else "configured"

    def patch_labels(self, ref: Ref, labels: dict[str, str | None]) -> None:
        """Set (or, with None, remove) labels by merge patch, whoever set them."""
        res = self._resource(ref.api_version, ref.kind)
        self._call(f"labelling {ref}", res.patch, name=ref.name, namespace=ref.namespace,
                   body={"metadata": {"labels": labels}}, content_type="application/merge-patch+json")

    def owned(self, selector: str, *, namespace: str, with_owner: bool = True) -> list[Ref]:
        """Every object of the chart's kinds carrying ``selector``: namespaced ones in ``namespace``.
        ``with_owner=False`` leaves out objects with an ownerReference: they belong to their owner
        (e.g. the root the CA generated), which the garbage collector removes them with."""
        found: list[Ref] = []
        for api_version, kind in PRUNE_KINDS:
            ns = namespace if self._resource(api_version, kind).namespaced else None
            for item in self.list(api_version, kind, namespace=ns, selector=selector):
                meta = item["metadata"]
                if with_owner or not meta.get("ownerReferences"):
                    found.append(Ref(api_version, kind, meta.get("namespace"), meta["name"]))
        return found

    def delete(self, ref: Ref) -> bool:
        """Delete with background propagation; False when it was already gone."""
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(ref.api_version, ref.kind)
        try:
            self._call(f"deleting {ref}", res.delete, name=ref.name, namespace=ref.namespace,
                       body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ClusterError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        return True

    def wait(self, refs: Iterable[Ref], *, check: Callable[[dict | None], str | None], timeout: float,
             what: str) -> None:
        """Until ``check(obj)`` is None (ready) for every ref; ClusterError naming what is missing."""
        refs = list(refs)

        def pending() -> str | None:
            reasons = [f"{ref}: {r}" for ref in refs if (r := check(self.get(ref))) is not None]
            return "; ".join(reasons) or None

        wait_until(pending, timeout=timeout, what=what)

    def list(self, api_version: str, kind: str, *, selector: str, namespace: str | None = None) -> list[dict]:
        res = self._resource(api_version, kind)
        return self._call(f"listing {kind}", res.get, namespace=namespace,
                          label_selector=selector).to_dict().get("items") or []


def wait_until(pending: Callable[[], str | None], *, timeout: float, what: str) -> None:
    """Poll ``pending()`` (None: done; else what is still missing) until done; ClusterError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (missing := pending()) is not None:
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what} after {timeout:.0f}s: {missing}")
        time.sleep(0.5)


def ready(obj: dict | None) -> str | None:
    """None when a Deployment/DaemonSet is rolled out and ready as ``helm --wait`` sees it, else why not."""
    if obj is None:
        return "not found"
    kind = obj["kind"]
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return "its controller has not seen the latest spec yet"
    if kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled") or 0
        updated = status.get("updatedNumberScheduled") or 0
        ready_n = status.get("numberReady") or 0
        if updated < desired or ready_n < desired:
            return f"{ready_n}/{desired} pods ready, {updated}/{desired} updated"
        return None
    if kind == "Deployment":
        want = obj["spec"].get("replicas", 1)
        updated = status.get("updatedReplicas") or 0
        available = status.get("availableReplicas") or 0
        if updated < want or available < want:
            return f"{available}/{want} replicas available, {updated}/{want} updated"
        return None
    return None


def established(obj: dict | None) -> str | None:
    """None once a CRD is Established (its kinds are served), else why not."""
    if obj is None:
        return "not found"
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    if (conditions.get("Established") or {}).get("status") == "True":
        return None
    names = conditions.get("NamesAccepted") or {}
    if names.get("status") == "False":
        return f"its names are not accepted: {names.get('message') or names.get('reason')}"
    return "not Established yet"


def gone(obj: dict | None) -> str | None:
    return None if obj is None else "still exists"


def _reason(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def manifest_refs(manifests: Iterable[Manifest]) -> list[Ref]:
    return [Ref.of(m.obj) for m in manifests]
