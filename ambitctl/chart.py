"""Ambit's chart, rendered with Helm's own engine (``helm_python``, Helm's Go SDK; no ``helm``
binary and no template engine of our own).

``values(files, sets)`` merges values as ``helm install -f A -f B --set k=v`` does (files in order,
then ``--set``); ``render(...)`` checks them against ``values.schema.json`` and returns the objects in
the order Helm installs them, each with the template it came from, and apart from them the
CustomResourceDefinitions of the chart's ``crds/`` directory (never templated, installed first).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ambitctl.errors import ChartError

DEFAULT_CHART = Path(__file__).resolve().parent.parent / "deploy" / "charts" / "ambit"
"""the chart in this checkout (``deploy/charts/ambit``)"""
RELEASE = "ambit"
NAMESPACE = "ambit-system"

# Helm's install order (pkg/release/v1/util/kind_sorter.go); unknown kinds go last.
INSTALL_ORDER = (
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
    "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
    "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
)


@dataclass(frozen=True)
class Manifest:
    source: str
    """the template it was rendered from, e.g. ``ambit/templates/rbac.yaml``"""
    obj: dict

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.obj["metadata"].get("namespace")

    def describe(self) -> str:
        ns = self.namespace
        return f"{self.kind} {ns + '/' if ns else ''}{self.name}"


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]
    notes: str
    crds: list[Manifest] = field(default_factory=list)
    """the chart's ``crds/`` (Helm's rule: created before the templates, as they are; never upgraded
    nor deleted by the release)"""

    def yaml(self) -> str:
        """The rendering as ``helm template`` prints it (without the CRDs, as Helm does unless
        ``--include-crds``)."""
        return "".join(f"---\n# Source: {m.source}\n" + yaml.safe_dump(m.obj, sort_keys=False)
                       for m in self.manifests)


@functools.cache
def _helm():
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ChartError(f"helm-python-sdk is not installed ({exc}); run `make deps` or `pip install helm-python-sdk`") from exc
    return helm_python


def merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of two value trees: maps merge key by key, anything else is replaced;
    ``null`` removes a key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def values(*, files: list[str] = (), sets: list[str] = (), base: dict | None = None) -> dict[str, Any]:
    """``base`` (e.g. the sandbox's own values), then each ``-f`` file, then each ``--set``."""
    helm = _helm()
    merged = dict(base or {})
    for file in files:
        try:
            doc = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as exc:
            raise ChartError(f"cannot read values file {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ChartError(f"values file {file} is not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise ChartError(f"values file {file} must hold a mapping of keys to values, not a {type(doc).__name__}")
        merged = merge(merged, doc)
    for expr in sets:
        try:
            merged = merge(merged, helm.parse_set_string(expr))
        except helm.HelmError as exc:
            raise ChartError(f"--set {expr}: {exc}; write it as key.sub=value, e.g. --set agent.logLevel=debug") from exc
    return merged


def render(user_values: dict[str, Any], *, chart: Path = DEFAULT_CHART, release: str = RELEASE,
           namespace: str = NAMESPACE, upgrade: bool = False) -> Rendered:
    helm = _helm()
    try:
        with helm.Chart.load(str(chart)) as loaded:
            files = loaded.render(user_values, name=release, namespace=namespace,
                                  is_install=not upgrade, is_upgrade=upgrade)
            crd_files = loaded.crds
    except helm.HelmValuesError as exc:
        raise ChartError(f"invalid values for chart {chart.name}: {str(exc).strip()}") from exc
    except helm.HelmError as exc:
        raise ChartError(f"cannot render chart {chart}: {str(exc).strip()}") from exc
    notes = ""
    manifests: list[Manifest] = []
    for source, text in sorted(files.items()):
        if source.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
                raise ChartError(f"BUG: {source} rendered something that is not a Kubernetes object: {doc!r:.200}")
            manifests.append(Manifest(source=source, obj=doc))
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    manifests.sort(key=lambda m: rank.get(m.kind, len(rank)))  # stable: template order within a kind
    crds: list[Manifest] = []
    for f in sorted(crd_files, key=lambda f: f["name"]):
        for doc in yaml.safe_load_all(f["data"]):
            if not doc:
                continue
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                raise ChartError(f"{f['name']} holds something that is not a CustomResourceDefinition; "
                                 "a chart's crds/ may hold only CRDs")
            crds.append(Manifest(source=f["name"], obj=doc))
    return Rendered(manifests=manifests, notes=notes, crds=crds)
