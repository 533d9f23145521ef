"""A CRD schema applied to custom resources: pruning, defaulting and validation (sandbox.api.structural),
worded as kube-apiserver words them; then the vendored Gateway API schemas on real objects."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api import structural
from sandbox.api.structural import Validator

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "charts" / "ambit" / "crds"

SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["image"],
            "properties": {
                "image": {"type": "string", "minLength": 1, "maxLength": 20},
                "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["Fast", "Safe"], "default": "Safe"},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "ratio": {"type": "number", "exclusiveMaximum": True, "maximum": 1},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "note": {"type": "string", "nullable": True},
                "ip": {"type": "string", "format": "ipv4"},
                "when": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "minItems": 1,
                         "x-kubernetes-list-type": "set"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "required": ["name"],
                                    "properties": {"name": {"type": "string"},
                                                   "protocol": {"type": "string", "default": "TCP"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {"known": {"type": "integer", "default": 7}}},
                "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                             "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                "policy": {"type": "object", "default": {},
                           "properties": {"retries": {"type": "integer", "default": 3}}},
            },
        },
        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    },
}


def obj(**spec):
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"x": "y"}},
            "spec": {"image": "nginx", **spec}}


PRUNE_CASES = [
    ("nothing-unknown", {"replicas": 2}, [], {"image": "nginx", "replicas": 2}),
    ("unknown-spec-field", {"colour": "blue"}, ["spec.colour"], {"image": "nginx"}),
    ("unknown-in-list-item", {"ports": [{"name": "a", "bogus": 1}]}, ["spec.ports[0].bogus"],
     {"image": "nginx", "ports": [{"name": "a"}]}),
    ("map-values-are-declared", {"labels": {"any": "thing"}}, [], {"image": "nginx", "labels": {"any": "thing"}}),
    ("preserve-unknown-fields-keeps-them", {"raw": {"whatever": {"deep": 1}}}, [],
     {"image": "nginx", "raw": {"whatever": {"deep": 1}}}),
    ("embedded-resource-keeps-apiversion-kind-metadata",
     {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"a": "b", "c": 1}}},
     ["spec.template.spec.c"],
     {"image": "nginx", "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"a": "b"}}}),
    ("int-or-string-object-untouched", {"port": 80}, [], {"image": "nginx", "port": 80}),
]


@pytest.mark.parametrize("spec,pruned,left", [c[1:] for c in PRUNE_CASES], ids=[c[0] for c in PRUNE_CASES])
def test_prune(spec, pruned, left):
    o = obj(**spec)
    o["extraTop"] = 1
    assert structural.prune(SCHEMA, o) == [*pruned, "extraTop"]
    assert o["spec"] == left
    assert o["metadata"] == {"name": "w", "labels": {"x": "y"}}, "metadata is the API's, never pruned by the schema"


DEFAULT_CASES = [
    ("absent-fields", {}, {"replicas": 1, "mode": "Safe", "policy": {"retries": 3}}),
    ("given-values-kept", {"replicas": 4, "mode": "Fast", "policy": {"retries": 0}},
     {"replicas": 4, "mode": "Fast", "policy": {"retries": 0}}),
    ("null-in-non-nullable-is-defaulted", {"replicas": None}, {"replicas": 1, "mode": "Safe", "policy": {"retries": 3}}),
    ("defaults-inside-list-items", {"ports": [{"name": "a"}, {"name": "b", "protocol": "UDP"}]},
     {"ports": [{"name": "a", "protocol": "TCP"}, {"name": "b", "protocol": "UDP"}]}),
    ("defaults-under-preserve-unknown", {"raw": {"other": 1}}, {"raw": {"other": 1, "known": 7}}),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in DEFAULT_CASES], ids=[c[0] for c in DEFAULT_CASES])
def test_defaults(spec, expected):
    o = obj(**spec)
    structural.apply_defaults(SCHEMA, o)
    for key, value in expected.items():
        assert o["spec"][key] == value
    assert o["metadata"] == {"name": "w", "labels": {"x": "y"}}


def test_a_default_is_a_copy():
    a, b = obj(), obj()
    structural.apply_defaults(SCHEMA, a)
    structural.apply_defaults(SCHEMA, b)
    a["spec"]["policy"]["retries"] = 9
    assert b["spec"]["policy"] == {"retries": 3}


VALIDATION_CASES = [
    ("valid", {"replicas": 3, "port": "http", "note": None, "ip": "10.0.0.1", "when": "2024-01-02T03:04:05Z",
               "tags": ["a"], "ports": [{"name": "a"}], "ratio": 0.5}, []),
    ("required", {"image": None}, [("FieldValueTypeInvalid", "spec.image",
                                   'Invalid value: "null": spec.image in body must be of type string: "null"')]),
    ("type", {"replicas": "three"},
     [("FieldValueTypeInvalid", "spec.replicas", 'Invalid value: "string": spec.replicas in body must be of type integer: "string"')]),
    ("float-is-not-an-integer", {"replicas": 1.5},
     [("FieldValueTypeInvalid", "spec.replicas", 'Invalid value: "number": spec.replicas in body must be of type integer: "number"')]),
    ("boolean-is-not-an-integer", {"replicas": True},
     [("FieldValueTypeInvalid", "spec.replicas", 'Invalid value: "boolean": spec.replicas in body must be of type integer: "boolean"')]),
    ("maximum", {"replicas": 11},
     [("FieldValueInvalid", "spec.replicas", "Invalid value: 11: spec.replicas in body should be less than or equal to 10")]),
    ("minimum", {"replicas": -1},
     [("FieldValueInvalid", "spec.replicas", "Invalid value: -1: spec.replicas in body should be greater than or equal to 0")]),
    ("exclusive-maximum", {"ratio": 1},
     [("FieldValueInvalid", "spec.ratio", "Invalid value: 1: spec.ratio in body should be less than 1")]),
    ("enum", {"mode": "Slow"},
     [("FieldValueNotSupported", "spec.mode", 'Unsupported value: "Slow": supported values: "Fast", "Safe"')]),
    ("pattern", {"name": "Web"},
     [("FieldValueInvalid", "spec.name", "Invalid value: \"Web\": spec.name in body should match '^[a-z]+$'")]),
    ("min-length", {"image": ""},
     [("FieldValueInvalid", "spec.image", 'Invalid value: "": spec.image in body should be at least 1 chars long')]),
    ("max-length", {"image": "x" * 21}, [("FieldValueTooLong", "spec.image", "Too long: may not be more than 20 bytes")]),
    ("max-items", {"tags": ["a", "b", "c"]}, [("FieldValueTooMany", "spec.tags", "Too many: 3: must have at most 2 items")]),
    ("min-items", {"tags": []},
     [("FieldValueInvalid", "spec.tags", "Invalid value: 0: spec.tags in body should have at least 1 items")]),
    ("format-ipv4", {"ip": "10.0.0.300"},
     [("FieldValueInvalid", "spec.ip", 'Invalid value: "10.0.0.300": spec.ip in body must be of type ipv4: "10.0.0.300"')]),
    ("format-date-time", {"when": "yesterday"},
     [("FieldValueInvalid", "spec.when", 'Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday"')]),
    ("nullable-allows-null", {"note": None}, []),
    ("int-or-string-refuses-a-list", {"port": [80]},
     [("FieldValueInvalid", "spec.port", 'Invalid value: "array": spec.port in body must validate at least one schema (anyOf)')]),
    ("list-map-duplicate-key", {"ports": [{"name": "a"}, {"name": "a"}]},
     [("FieldValueDuplicate", "spec.ports[1]", 'Duplicate value: {"name": "a"}')]),
    ("list-set-duplicate", {"tags": ["a", "a"]}, [("FieldValueDuplicate", "spec.tags[1]", 'Duplicate value: "a"')]),
    ("required-in-list-item", {"ports": [{"protocol": "UDP"}]},
     [("FieldValueRequired", "spec.ports[0].name", "Required value")]),
    ("embedded-resource-needs-apiversion-and-kind", {"template": {"spec": {}}},
     [("FieldValueRequired", "spec.template.apiVersion", "Required value"),
      ("FieldValueRequired", "spec.template.kind", "Required value")]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES])
def test_validation_causes(spec, expected):
    causes = Validator(SCHEMA).causes(obj(**spec))
    assert [(c["reason"], c["field"], c["message"]) for c in causes] == expected


def test_a_missing_required_field_names_the_field():
    o = obj()
    del o["spec"]["image"]
    assert Validator(SCHEMA).causes(o) == [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.image"}]


def test_metadata_is_not_the_schemas_to_judge():
    schema = {"type": "object", "properties": {"metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 2}}}}}
    assert Validator(schema).causes({"metadata": {"name": "much-too-long"}}) == []


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=12)


@given(spec=st.dictionaries(st.sampled_from(sorted(SCHEMA["properties"]["spec"]["properties"]) + ["other"]), JSON, max_size=6))
def test_any_object_gets_causes_not_exceptions_and_pruning_is_idempotent(spec):
    o = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    first = structural.prune(SCHEMA, o)
    again = copy.deepcopy(o)
    assert structural.prune(SCHEMA, again) == [] and again == o
    assert all(p.startswith("spec.") for p in first)
    structural.apply_defaults(SCHEMA, o)
    for cause in Validator(SCHEMA).causes(o):
        assert cause["field"] and cause["message"] and cause["reason"].startswith("Field")


# ---- the vendored Gateway API schemas --------------------------------------------------------


def _schema(kind_file: str, version: str = "v1") -> dict:
    crd = yaml.safe_load((CRDS / f"gateway.networking.k8s.io_{kind_file}.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def _admit(schema: dict, o: dict) -> tuple[list[str], list[dict]]:
    pruned = structural.prune(schema, o)
    structural.apply_defaults(schema, o)
    return pruned, Validator(schema).causes(o)


GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "shop"},
           "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def test_gateway_defaults_come_from_the_crd():
    o = copy.deepcopy(GATEWAY)
    assert _admit(_schema("gateways"), o) == ([], [])
    assert o["spec"]["listeners"][0]["allowedRoutes"] == {"namespaces": {"from": "Same"}}
    assert [c["type"] for c in o["status"]["conditions"]] == ["Accepted", "Programmed"]


@pytest.mark.parametrize("change,field", [
    pytest.param({"port": 70000}, "spec.listeners[0].port", id="port-out-of-range"),
    pytest.param({"name": "Mesh!"}, "spec.listeners[0].name", id="listener-name-pattern"),
    pytest.param({"protocol": ""}, "spec.listeners[0].protocol", id="empty-protocol"),
])
def test_gateway_rules_from_the_crd(change, field):
    o = copy.deepcopy(GATEWAY)
    o["spec"]["listeners"][0].update(change)
    _, causes = _admit(_schema("gateways"), o)
    assert field in {c["field"] for c in causes}


def test_gateway_address_must_be_an_ip_when_typed_so():
    o = copy.deepcopy(GATEWAY)
    o["spec"]["addresses"] = [{"type": "IPAddress", "value": "not-an-ip"}]
    _, causes = _admit(_schema("gateways"), o)
    assert [c["field"] for c in causes] == ["spec.addresses[0]"]
    o["spec"]["addresses"] = [{"type": "IPAddress", "value": "10.1.2.3"}]
    assert _admit(_schema("gateways"), o) == ([], [])


def test_httproute_defaults_a_path_prefix_match():
    o = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
         "spec": {"parentRefs": [{"name": "waypoint"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
    assert _admit(_schema("httproutes"), o) == ([], [])
    assert o["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert o["spec"]["parentRefs"][0]["group"] == "gateway.networking.k8s.io"
