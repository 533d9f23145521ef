"""The four PATCH flavours of the sandbox API, as pure functions."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.api.patch import (
    PatchApplyError,
    PatchFormatError,
    apply_patch,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)

# ---- RFC 7386: the examples from the RFC's appendix A plus Kubernetes usage -----------------

MERGE_CASES = [
    ("replace-scalar", {"a": "b"}, {"a": "c"}, {"a": "c"}),
    ("add-key", {"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ("null-deletes", {"a": "b"}, {"a": None}, {}),
    ("null-deletes-one", {"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ("list-replaces", {"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ("scalar-to-list", {"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ("nested", {"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ("list-of-maps-replaced", {"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ("non-object-patch", ["a", "b"], ["c", "d"], ["c", "d"]),
    ("object-over-list", {"a": "b"}, ["c"], ["c"]),
    ("null-into-nested-new", {"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ("null-in-new-subtree", {}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ("kubectl-label", {"metadata": {"name": "x", "labels": {"a": "1"}}}, {"metadata": {"labels": {"b": "2"}}}, {"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}}),
    ("kubectl-unlabel", {"metadata": {"labels": {"a": "1", "b": "2"}}}, {"metadata": {"labels": {"a": None}}}, {"metadata": {"labels": {"b": "2"}}}),
]


@pytest.mark.parametrize("target,patch,want", [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_patch(target, patch, want):
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == want
    assert target == before, "the target must not be mutated"


# ---- RFC 6902 ---------------------------------------------------------------------------------

DOC = {"metadata": {"name": "web", "labels": {"a/b": "1"}}, "spec": {"list": [1, 2, 3]}}

JSON_PATCH_CASES = [
    ("add-key", [{"op": "add", "path": "/spec/x", "value": 1}], {**DOC, "spec": {"list": [1, 2, 3], "x": 1}}),
    ("add-index", [{"op": "add", "path": "/spec/list/1", "value": 9}], {**DOC, "spec": {"list": [1, 9, 2, 3]}}),
    ("add-end", [{"op": "add", "path": "/spec/list/-", "value": 4}], {**DOC, "spec": {"list": [1, 2, 3, 4]}}),
    ("remove", [{"op": "remove", "path": "/spec/list/0"}], {**DOC, "spec": {"list": [2, 3]}}),
    ("replace", [{"op": "replace", "path": "/spec/list/2", "value": 7}], {**DOC, "spec": {"list": [1, 2, 7]}}),
    ("escaped-pointer", [{"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"}], {**DOC, "metadata": {"name": "web", "labels": {"a/b": "2"}}}),
    ("move", [{"op": "move", "from": "/spec/list", "path": "/spec/moved"}], {**DOC, "spec": {"moved": [1, 2, 3]}}),
    ("copy", [{"op": "copy", "from": "/metadata/name", "path": "/spec/name"}], {**DOC, "spec": {"list": [1, 2, 3], "name": "web"}}),
    ("test-then-replace", [{"op": "test", "path": "/metadata/name", "value": "web"}, {"op": "replace", "path": "/metadata/name", "value": "api"}], {**DOC, "metadata": {"name": "api", "labels": {"a/b": "1"}}}),
    ("replace-root", [{"op": "replace", "path": "", "value": {"x": 1}}], {"x": 1}),
]


@pytest.mark.parametrize("ops,want", [c[1:] for c in JSON_PATCH_CASES], ids=[c[0] for c in JSON_PATCH_CASES])
def test_json_patch(ops, want):
    before = copy.deepcopy(DOC)
    assert json_patch(DOC, ops) == want
    assert DOC == before


JSON_PATCH_ERRORS = [
    ("test-fails", [{"op": "test", "path": "/metadata/name", "value": "api"}], PatchApplyError, "test operation failed"),
    ("test-true-is-not-1", [{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": True}], PatchApplyError, "test operation failed"),
    ("remove-missing", [{"op": "remove", "path": "/spec/nope"}], PatchApplyError, "does not exist"),
    ("replace-missing", [{"op": "replace", "path": "/spec/nope", "value": 1}], PatchApplyError, "does not exist"),
    ("index-out-of-range", [{"op": "add", "path": "/spec/list/9", "value": 1}], PatchApplyError, "out of bounds"),
    ("leading-zero-index", [{"op": "remove", "path": "/spec/list/01"}], PatchApplyError, "not a valid array index"),
    ("move-into-child", [{"op": "move", "from": "/spec", "path": "/spec/list/0"}], PatchApplyError, "own child"),
    ("unknown-op", [{"op": "frobnicate", "path": "/x"}], PatchFormatError, "unknown op"),
    ("missing-value", [{"op": "add", "path": "/x"}], PatchFormatError, "missing 'value'"),
    ("not-a-list", {"op": "add"}, PatchFormatError, "JSON array"),
    ("bad-pointer", [{"op": "remove", "path": "spec"}], PatchFormatError, "must be empty or start with '/'"),
]


@pytest.mark.parametrize("ops,exc,msg", [c[1:] for c in JSON_PATCH_ERRORS], ids=[c[0] for c in JSON_PATCH_ERRORS])
def test_json_patch_errors(ops, exc, msg):
    with pytest.raises(exc, match=msg):
        json_patch(DOC, ops)


def test_json_patch_is_atomic():
    ops = [{"op": "add", "path": "/spec/x", "value": 1}, {"op": "remove", "path": "/nope"}]
    before = copy.deepcopy(DOC)
    with pytest.raises(PatchApplyError):
        json_patch(DOC, ops)
    assert DOC == before


# ---- strategic merge ----------------------------------------------------------------------------

DEPLOY = {
    "metadata": {"name": "web", "finalizers": ["a"]},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80, "protocol": "TCP"}], "env": [{"name": "A", "value": "1"}]},
                    {"name": "side", "image": "busybox"},
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}],
                "tolerations": [{"key": "x"}],
            }
        }
    },
}


def containers(doc):
    return doc["spec"]["template"]["spec"]["containers"]


SMP_CASES = [
    (
        "kubectl-apply-keeps-ports",
        {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "web"}, {"name": "side"}], "containers": [{"name": "web", "image": "nginx:1.28"}]}}}},
        lambda d: containers(d)[0] == {"name": "web", "image": "nginx:1.28", "ports": [{"containerPort": 80, "protocol": "TCP"}], "env": [{"name": "A", "value": "1"}]} and len(containers(d)) == 2,
    ),
    (
        "add-container-appends",
        {"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x"}]}}}},
        lambda d: [c["name"] for c in containers(d)] == ["web", "side", "new"],
    ),
    (
        "delete-container-by-key",
        {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}},
        lambda d: [c["name"] for c in containers(d)] == ["web"],
    ),
    (
        "env-merged-by-name",
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "9"}]}]}}}},
        lambda d: containers(d)[0]["env"] == [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}],
    ),
    (
        "container-ports-by-containerPort",
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 443}]}]}}}},
        lambda d: [p["containerPort"] for p in containers(d)[0]["ports"]] == [80, 443],
    ),
    (
        "list-replace-directive",
        {"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}},
        lambda d: containers(d) == [{"name": "only", "image": "x"}],
    ),
    (
        "map-replace-directive",
        {"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "c", "image": "i"}]}}}},
        lambda d: d["spec"]["template"]["spec"] == {"containers": [{"name": "c", "image": "i"}]},
    ),
    (
        "map-delete-directive",
        {"spec": {"template": {"$patch": "delete"}}},
        lambda d: d["spec"] == {},
    ),
    (
        "null-deletes-field",
        {"spec": {"template": {"spec": {"volumes": None}}}},
        lambda d: "volumes" not in d["spec"]["template"]["spec"],
    ),
    (
        "list-without-key-replaces",
        {"spec": {"template": {"spec": {"tolerations": [{"key": "y"}]}}}},
        lambda d: d["spec"]["template"]["spec"]["tolerations"] == [{"key": "y"}],
    ),
    (
        "finalizers-merge-as-set",
        {"metadata": {"finalizers": ["b", "a"]}},
        lambda d: d["metadata"]["finalizers"] == ["a", "b"],
    ),
    (
        "delete-from-primitive-list",
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}},
        lambda d: d["metadata"]["finalizers"] == [],
    ),
    (
        "set-element-order-reorders",
        {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}}},
        lambda d: [c["name"] for c in containers(d)] == ["side", "web"],
    ),
    (
        "retain-keys",
        {"spec": {"template": {"spec": {"$retainKeys": ["containers"], "containers": [{"name": "web", "image": "i"}]}}}},
        lambda d: set(d["spec"]["template"]["spec"]) == {"containers"},
    ),
]


@pytest.mark.parametrize("patch,check", [c[1:] for c in SMP_CASES], ids=[c[0] for c in SMP_CASES])
def test_strategic_merge_patch(patch, check):
    before = copy.deepcopy(DEPLOY)
    out = strategic_merge_patch(DEPLOY, patch, kind="Deployment")
    assert check(out), out
    assert DEPLOY == before
    assert "$" not in repr(out)


SERVICE = {"spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "name": "http"}]}}


@pytest.mark.parametrize(
    "kind,patch,want_ports",
    [
        ("Service", {"spec": {"ports": [{"port": 443, "name": "https"}]}}, [80, 443]),
        ("Service", {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, [80]),
        ("ConfigMap", {"spec": {"ports": [{"port": 443}]}}, [443]),
    ],
    ids=["service-ports-by-port", "service-port-updated-in-place", "other-kinds-replace"],
)
def test_strategic_service_ports(kind, patch, want_ports):
    out = strategic_merge_patch(SERVICE, patch, kind=kind)
    assert [p["port"] for p in out["spec"]["ports"]] == want_ports
    if len(want_ports) == 1 and kind == "Service":
        assert out["spec"]["ports"][0] == {"port": 80, "targetPort": 9090, "protocol": "TCP", "name": "http"}


@pytest.mark.parametrize(
    "patch,msg",
    [
        ({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}, "merge key 'name'"),
        ({"spec": {"template": {"spec": {"containers": ["x"]}}}}, "must be objects"),
        ({"spec": {"$patch": "explode"}}, "unknown \\$patch directive"),
    ],
    ids=["missing-merge-key", "scalar-in-keyed-list", "unknown-directive"],
)
def test_strategic_errors(patch, msg):
    with pytest.raises(PatchFormatError, match=msg):
        strategic_merge_patch(DEPLOY, patch, kind="Deployment")


def test_apply_creates_from_nothing_and_merges_onto_live():
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert apply_patch(None, applied, kind="ConfigMap") == applied
    live = {**applied, "metadata": {"name": "c", "uid": "u"}, "data": {"a": "0", "b": "2"}}
    assert apply_patch(live, applied, kind="ConfigMap")["data"] == {"a": "1", "b": "2"}
    assert apply_patch(live, applied, kind="ConfigMap")["metadata"]["uid"] == "u"


# ---- properties ---------------------------------------------------------------------------------

keys = st.text(alphabet="abcdefgh/~", min_size=1, max_size=4)
scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=3))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)),
    max_leaves=12,
)
json_docs = st.dictionaries(keys, json_values, max_size=4)


@given(json_docs)
def test_merge_patch_of_a_document_onto_itself_is_identity(doc):
    assert merge_patch(doc, doc) == doc


@given(json_docs, json_docs)
def test_merge_patch_is_idempotent(doc, patch):
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once


def _pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


@given(json_docs, keys, json_values)
def test_json_patch_add_then_remove_round_trips(doc, key, value):
    if key in doc:
        return
    added = json_patch(doc, [{"op": "add", "path": _pointer(key), "value": value}])
    assert added[key] == value
    assert json_patch(added, [{"op": "remove", "path": _pointer(key)}]) == doc


@given(json_docs)
def test_strategic_merge_with_empty_patch_is_identity(doc):
    assert strategic_merge_patch(doc, {}, kind="Pod") == doc


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True), st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True))
def test_strategic_container_merge_keeps_every_name_once(before, patch_names):
    doc = {"spec": {"containers": [{"name": n, "image": "old"} for n in before]}}
    patch = {"spec": {"containers": [{"name": n, "image": "new"} for n in patch_names]}}
    out = strategic_merge_patch(doc, patch, kind="Pod")
    names = [c["name"] for c in out["spec"]["containers"]]
    assert sorted(names) == sorted(set(before) | set(patch_names))
    assert all(c["image"] == ("new" if c["name"] in patch_names else "old") for c in out["spec"]["containers"])
