"""``ambit install`` and ``ambit uninstall``: the chart, applied the way ``helm install`` would
leave the cluster, from one command.

install:   render (values checked by the chart's schema: a bad value stops here, nothing applied)
           -> the chart's CRDs (``crds/``: the Gateway API), as ``helm install`` treats them: each
           one missing is created, one that exists is left as it is, and all must be
           ``Established`` before anything else -> namespace (created and marked when absent)
           -> server-side apply of every object in Helm's order -> prune what this release
           labelled and the rendering no longer has -> wait until the identity CA and every node
           agent are ready.
uninstall: delete the workloads first and wait until the agents' pods are gone (each agent's CNI
           installer unchains ambit-cni from its node as it sees its DaemonSet gone), then every
           other object of Ambit's, then the namespace if ``ambit install`` created it. CRDs stay
           (as with ``helm uninstall``: deleting one deletes every object of its kind, also
           other users' Gateways) unless given as ``crds``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from ambitctl import apply as kube
from ambitctl.chart import INSTALL_ORDER, Manifest, Rendered
from ambitctl.cluster import ENROL_LABEL

CREATED_BY = "ambit.dev/created-by"
"""annotation on a namespace ``ambit install`` created, so ``ambit uninstall`` removes it again"""
WORKLOAD_KINDS = ("DaemonSet", "Deployment")
CRD_WAIT = 60.0
"""seconds a new CRD may take to be Established (Helm waits as long)"""


def release_selector(release: str) -> str:
    return f"app.kubernetes.io/part-of=ambit,app.kubernetes.io/instance={release}"


@dataclass
class InstallReport:
    counts: Counter = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return any(self.counts[k] for k in ("created", "configured", "pruned"))

    def summary(self) -> str:
        parts = [f"{self.counts[k]} {k}" for k in ("created", "configured", "unchanged", "pruned") if self.counts[k]]
        return ", ".join(parts) or "nothing to do"


def install(api_client, rendered: Rendered, *, namespace: str, release: str, wait: float | None,
            say: Callable[[str], None], skip_crds: bool = False) -> InstallReport:
    """``skip_crds`` (``helm install --skip-crds``): the cluster brings its own Gateway API CRDs."""
    applier = kube.Applier(api_client)
    report = InstallReport()
    if not skip_crds:
        install_crds(applier, rendered, report=report, say=say)

    ns_ref = kube.Ref("v1", "Namespace", None, namespace)
    if applier.get(ns_ref) is None:
        applier.apply({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "ambit"},
                                    "annotations": {CREATED_BY: "ambit-install"}}})
        report.counts["created"] += 1
        say(f"created Namespace {namespace}")

    for m in rendered.manifests:
        outcome = applier.apply(m.obj)
        report.counts[outcome] += 1
        if outcome != "unchanged":
            say(f"{outcome} {m.describe()}")

    keep = set(kube.manifest_refs(rendered.manifests))
    for ref in applier.owned(release_selector(release), namespace=namespace, with_owner=False):
        if ref not in keep and applier.delete(ref):
            report.counts["pruned"] += 1
            say(f"pruned {ref} (no longer in the chart)")

    if wait:
        workloads = [r for r in kube.manifest_refs(rendered.manifests) if r.kind in WORKLOAD_KINDS]
        say(f"waiting up to {wait:.0f}s for {', '.join(map(str, workloads))} to be ready")
        applier.wait(workloads, check=kube.ready, timeout=wait, what="Ambit is not ready")
    return report


def install_crds(applier: kube.Applier, rendered: Rendered, *, report: InstallReport, say: Callable[[str], None]) -> None:
    """Create the chart's CRDs that are missing (never change one that exists: another release or
    the cluster's admin may own a newer one), then wait until every one is Established."""
    for m in rendered.crds:
        ref = kube.Ref.of(m.obj)
        live = applier.get(ref)
        if live is None:
            report.counts[applier.apply(m.obj)] += 1
            say(f"created {m.describe()}")
            continue
        ours = _bundle_version(m.obj)
        theirs = _bundle_version(live)
        if ours != theirs:
            say(f"kept {m.describe()} as it is ({theirs or 'unknown version'}; the chart has {ours or 'another'}): "
                f"CRDs are never upgraded by an install; to update it: kubectl apply --server-side -f {m.source}")
        report.counts["unchanged"] += 1
    if rendered.crds:
        applier.wait([kube.Ref.of(m.obj) for m in rendered.crds], check=kube.established, timeout=CRD_WAIT,
                     what="the chart's CustomResourceDefinitions are not Established")


def _bundle_version(crd: dict) -> str:
    return ((crd.get("metadata") or {}).get("annotations") or {}).get("gateway.networking.k8s.io/bundle-version", "")


def uninstall(api_client, *, namespace: str, release: str, timeout: float, say: Callable[[str], None],
              crds: Sequence[Manifest] = ()) -> int:
    """Remove every object of Ambit's; returns how many were deleted. ``crds``: CRDs to delete
    too (none by default, as Helm; every object of their kinds in the cluster goes with them)."""
    applier = kube.Applier(api_client)
    # Ambit's namespaced objects include what the CA made (labelled part-of=ambit, no release label)
    refs = [r for r in applier.owned("app.kubernetes.io/part-of=ambit", namespace=namespace) if r.namespace]
    refs += [r for r in applier.owned(release_selector(release), namespace=namespace) if r.namespace is None]
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    refs.sort(key=lambda r: (r.kind not in WORKLOAD_KINDS, -rank.get(r.kind, len(rank))))
    deleted = 0
    workloads = [r for r in refs if r.kind in WORKLOAD_KINDS]
    for ref in workloads:
        if applier.delete(ref):
            deleted += 1
            say(f"deleted {ref}")
    if workloads:
        say("waiting for the node agents to stop (each unchains ambit-cni from its node's CNI config)")
        kube.wait_until(lambda: ", ".join(p["metadata"]["name"] for p in applier.list(
            "v1", "Pod", namespace=namespace, selector=release_selector(release))) or None,
            timeout=timeout, what=f"the agents' pods in {namespace} did not stop")
    for ref in refs:
        if ref.kind not in WORKLOAD_KINDS and applier.delete(ref):
            deleted += 1
            say(f"deleted {ref}")
    applier.wait(refs, check=kube.gone, timeout=timeout, what="objects still exist")

    ns_ref = kube.Ref("v1", "Namespace", None, namespace)
    ns = applier.get(ns_ref)
    if ns is not None and (ns["metadata"].get("annotations") or {}).get(CREATED_BY) == "ambit-install":
        applier.delete(ns_ref)
        applier.wait([ns_ref], check=kube.gone, timeout=timeout, what=f"namespace {namespace} is still terminating")
        deleted += 1
        say(f"deleted Namespace {namespace} (ambit install had created it)")
    crd_refs = [kube.Ref.of(m.obj) for m in crds]
    for ref in crd_refs:
        if applier.delete(ref):
            deleted += 1
            say(f"deleted {ref} (and every object of its kind)")
    applier.wait(crd_refs, check=kube.gone, timeout=timeout, what="CustomResourceDefinitions still exist")
    enrolled = [n["metadata"]["name"] for n in applier.list("v1", "Namespace", selector=f"{ENROL_LABEL}=ambient")]
    if deleted and enrolled:
        say(f"warning: namespaces {', '.join(enrolled)} are still labelled {ENROL_LABEL}=ambient: their running "
            "pods keep their redirection and fail closed until Ambit is installed again or they restart; "
            f"new pods start without Ambit. Unlabel them with `kubectl label namespace NS {ENROL_LABEL}-`")
    return deleted
