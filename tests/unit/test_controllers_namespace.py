"""namespace.reconcile: grace period, what is deleted in which order, when the namespace is finalized."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sandbox.controllers.actions import DeleteCollection, FinalizeNamespace, Requeue
from sandbox.controllers.namespace import DELETED_AGAIN, GRACE, RECHECK, NamespaceController, reconcile
from sandbox.controllers.objects import Resource

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)

PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
EVENTS = Resource("", "v1", "events")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
REPLICASETS = Resource("apps", "v1", "replicasets")
SLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
ROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes")


def namespace(*, deleted_ago: float | None = 10.0, finalizers=("kubernetes",), rv="41"):
    meta = {"name": "shop", "uid": "uid-shop", "resourceVersion": rv}
    if deleted_ago is not None:
        meta["deletionTimestamp"] = (NOW - timedelta(seconds=deleted_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"kind": "Namespace", "metadata": meta, "spec": {"finalizers": list(finalizers)},
            "status": {"phase": "Terminating" if deleted_ago is not None else "Active"}}


def obj(name, *, deleting=False):
    meta = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:59:59Z"
        meta["finalizers"] = ["example.com/hold"]
    return {"metadata": meta}


def summary(actions):
    out = []
    for a in actions:
        if isinstance(a, DeleteCollection):
            out.append(("delete", str(a.resource)))
        elif isinstance(a, FinalizeNamespace):
            out.append(("finalize", a.finalizers, a.resource_version))
        elif isinstance(a, Requeue):
            out.append(("requeue", a.after))
    return out


EVERYTHING = {
    PODS: [obj("web-abc-x1"), obj("web-abc-x2")],
    CONFIGMAPS: [obj("settings")],
    SERVICEACCOUNTS: [obj("default")],
    EVENTS: [obj("web-abc-x1.17a")],
    DEPLOYMENTS: [obj("web")],
    REPLICASETS: [obj("web-abc")],
    SLICES: [obj("web-q2w4z")],
    ROUTES: [obj("web")],
}


@pytest.mark.parametrize(
    "ns,content,expected",
    [
        pytest.param(namespace(deleted_ago=None), EVERYTHING, [], id="active-namespace-untouched"),
        pytest.param(namespace(finalizers=()), {}, [], id="finalized-already"),
        pytest.param(namespace(finalizers=("example.com/other",)), EVERYTHING, [], id="only-someone-elses-finalizer"),
        pytest.param(namespace(deleted_ago=0), EVERYTHING, [("requeue", GRACE)], id="grace-period-first"),
        pytest.param(namespace(deleted_ago=1), EVERYTHING, [("requeue", GRACE - 1)], id="rest-of-the-grace-period"),
        pytest.param(
            namespace(), EVERYTHING,
            [("delete", "deployments.apps"), ("delete", "replicasets.apps"), ("delete", "pods"),
             ("delete", "configmaps"), ("delete", "endpointslices.discovery.k8s.io"),
             ("delete", "httproutes.gateway.networking.k8s.io"), ("delete", "events"),
             ("delete", "serviceaccounts"), ("requeue", DELETED_AGAIN)],
            id="owners-first-serviceaccounts-last",
        ),
        pytest.param(namespace(), {PODS: [], CONFIGMAPS: [obj("settings")], SERVICEACCOUNTS: []},
                     [("delete", "configmaps"), ("requeue", DELETED_AGAIN)], id="only-resources-with-objects"),
        pytest.param(namespace(), {CONFIGMAPS: [obj("held", deleting=True)], PODS: [obj("p")]},
                     [("delete", "pods"), ("requeue", DELETED_AGAIN)], id="objects-on-their-way-out-not-deleted-again"),
        pytest.param(namespace(), {CONFIGMAPS: [obj("held", deleting=True)]}, [("requeue", RECHECK)],
                     id="waits-for-objects-held-by-their-own-finalizers"),
        pytest.param(namespace(), {PODS: [], CONFIGMAPS: []}, [("finalize", (), "41")], id="empty-then-finalize"),
        pytest.param(namespace(finalizers=("example.com/other", "kubernetes")), {},
                     [("finalize", ("example.com/other",), "41")], id="finalize-keeps-other-finalizers"),
    ],
)
def test_reconcile(ns, content, expected):
    got = summary(reconcile(ns, content, now=NOW))
    assert [g[:1] + tuple(round(x, 3) if isinstance(x, float) else x for x in g[1:]) for g in got] == expected


class Content:
    def __init__(self, content):
        self.content = content
        self.reads = 0

    def namespace_content(self, namespace):
        self.reads += 1
        return self.content


class Cache:
    def __init__(self, *namespaces):
        self.items = {("", n["metadata"]["name"]): n for n in namespaces}

    def get(self, kind, key):
        assert kind == "Namespace"
        return self.items.get(key)

    def list(self, kind, namespace=None):
        return list(self.items.values())


def test_controller_reads_content_only_once_the_grace_period_is_over():
    content = Content({PODS: [obj("p")]})
    controller = NamespaceController(content)
    assert summary(controller.sync("shop", Cache(namespace(deleted_ago=0)), now=NOW)) == [("requeue", GRACE)]
    assert content.reads == 0
    assert summary(controller.sync("shop", Cache(namespace()), now=NOW)) == [("delete", "pods"), ("requeue", DELETED_AGAIN)]
    assert content.reads == 1
    assert controller.sync("gone", Cache(namespace()), now=NOW) == []
    assert controller.sync("shop", Cache(namespace(deleted_ago=None)), now=NOW) == []
    assert content.reads == 1


@pytest.mark.parametrize(
    "ns,etype,keys",
    [
        pytest.param(namespace(), "MODIFIED", ("shop",), id="terminating"),
        pytest.param(namespace(), "SYNC", ("shop",), id="resync"),
        pytest.param(namespace(deleted_ago=None), "ADDED", (), id="active"),
        pytest.param(namespace(finalizers=()), "DELETED", (), id="deleted"),
    ],
)
def test_events_map_to_keys(ns, etype, keys):
    assert tuple(NamespaceController(Content({})).keys_for("Namespace", ns, etype=etype, store=Cache())) == keys


def test_resource_paths():
    assert PODS.path("shop") == "/api/v1/namespaces/shop/pods"
    assert ROUTES.path("shop") == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes"
    assert str(DEPLOYMENTS) == "deployments.apps"
