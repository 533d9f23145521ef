"""CustomResourceDefinitions in the sandbox API (sandbox.api.crds, registry, printer columns):
what a CRD is checked for, its status, the kinds it serves and how their tables print."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from sandbox.api import crds
from sandbox.api.registry import Registry, version_priority
from sandbox.api.store import Stored, dumps
from sandbox.api.tables import printer_cell, render_table

CRDS = Path(__file__).resolve().parents[2] / "deploy" / "charts" / "ambit" / "crds"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def widget_crd(**spec_changes):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1", "served": True, "storage": True,
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "replicas": {"type": "integer"}, "size": {"type": "string"}}}}}},
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "additionalPrinterColumns": [
                     {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
                     {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
                     {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
                {"name": "v1beta1", "served": True, "storage": False,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
                {"name": "v1alpha1", "served": False, "storage": False,
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        },
    }
    crd["spec"].update(spec_changes)
    crds.apply_defaults(crd)
    return crd


def established(crd, registry=None):
    crd["status"] = crds.status(crd, old_status=None, conflict=crds.conflict_of(crd, registry or Registry()), now="2026-01-01T00:00:00Z")
    return crd


def causes_of(crd):
    return [(c["field"], c["message"]) for c in crds.validate(crd)]


def test_a_good_crd_has_no_causes_and_gets_its_names_defaulted():
    crd = widget_crd()
    assert causes_of(crd) == []
    assert crd["spec"]["names"]["singular"] == "widget" and crd["spec"]["names"]["listKind"] == "WidgetList"
    assert crd["spec"]["conversion"] == {"strategy": "None"}


def _versions(*flags):
    return [{"name": f"v{i + 1}", "served": served, "storage": storage, "schema": {"openAPIV3Schema": {"type": "object"}}}
            for i, (served, storage) in enumerate(flags)]


CRD_CAUSES = [
    ("name-must-be-plural-dot-group", {"group": "other.com"}, ("metadata.name", 'Invalid value: "widgets.example.com": must be spec.names.plural+"."+spec.group')),
    ("group-needs-a-dot", {"group": "example"}, ("spec.group", 'Invalid value: "example": should be a domain with at least one dot')),
    ("scope", {"scope": "Global"}, ("spec.scope", 'Unsupported value: "Global": supported values: "Cluster", "Namespaced"')),
    ("two-storage-versions", {"versions": _versions((True, True), (True, True))},
     ("spec.versions", 'Invalid value: "array": must have exactly one version marked as storage version')),
    ("nothing-served", {"versions": _versions((False, True))},
     ("spec.versions", 'Invalid value: "array": must have at least one served version')),
    ("schema-required", {"versions": [{"name": "v1", "served": True, "storage": True}]},
     ("spec.versions[0].schema.openAPIV3Schema", "Required value: schemas are required")),
    ("webhook-conversion", {"conversion": {"strategy": "Webhook"}},
     ("spec.conversion.strategy", 'Unsupported value: "Webhook": supported values: "None" (the sandbox API has no conversion webhooks)')),
]


@pytest.mark.parametrize("change,cause", [c[1:] for c in CRD_CAUSES], ids=[c[0] for c in CRD_CAUSES])
def test_crd_causes(change, cause):
    assert cause in causes_of(widget_crd(**change))


def test_a_printer_column_path_outside_the_subset_is_refused():
    crd = widget_crd()
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = [{"name": "X", "type": "string", "jsonPath": ".spec..x"}]
    [(field, message)] = causes_of(crd)
    assert field == "spec.versions[0].additionalPrinterColumns[0].jsonPath" and "recursive descent" in message


def test_scope_and_plural_never_change():
    old = widget_crd()
    new = widget_crd(scope="Cluster")
    new["spec"]["names"]["plural"] = "gadgets"
    assert {c["field"] for c in crds.immutable_causes(new, old)} == {"spec.scope", "spec.names.plural"}


def test_status_accepts_names_and_keeps_transition_times():
    crd = established(widget_crd())
    status = crd["status"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("NamesAccepted", "True"), ("Established", "True")]
    assert status["acceptedNames"] == {"plural": "widgets", "singular": "widget", "shortNames": ["wd"], "kind": "Widget",
                                       "listKind": "WidgetList", "categories": ["all"]}
    assert status["storedVersions"] == ["v1"]
    later = crds.status(crd, old_status=status, conflict="", now="2026-02-02T00:00:00Z")
    assert later == status


def test_a_new_storage_version_is_added_to_stored_versions():
    crd = established(widget_crd())
    for v in crd["spec"]["versions"]:
        v["storage"] = v["name"] == "v1beta1"
    assert crds.status(crd, old_status=crd["status"], conflict="", now="x")["storedVersions"] == ["v1", "v1beta1"]


def test_a_name_taken_by_another_crd_is_not_accepted_nor_served():
    registry = Registry()
    registry.set_custom("widgets.example.com", crds.served_types(established(widget_crd())))
    rival = widget_crd()
    rival["metadata"]["name"] = "widgets2.example.com"
    rival["spec"]["names"] = {"plural": "widgets2", "kind": "Widget2", "shortNames": ["wd"]}
    established(rival, registry)
    conditions = {c["type"]: c for c in rival["status"]["conditions"]}
    assert conditions["NamesAccepted"]["status"] == "False" and conditions["NamesAccepted"]["message"] == '"wd" is already in use'
    assert conditions["Established"]["status"] == "False"
    assert crds.served_types(rival) == ()


def test_approval_condition_for_kubernetes_groups():
    crd = yaml.safe_load((CRDS / "gateway.networking.k8s.io_gateways.yaml").read_text())
    crds.apply_defaults(crd)
    crd = established(crd)
    approval = next(c for c in crd["status"]["conditions"] if c["type"] == "KubernetesAPIApprovalPolicyConformant")
    assert approval["status"] == "True" and approval["reason"] == "ApprovedAnnotation"


def test_served_types_one_per_served_version_and_the_registry_serves_them():
    registry = Registry()
    registry.set_custom("widgets.example.com", crds.served_types(established(widget_crd())))
    v1 = registry.lookup("example.com", "v1", "widgets")
    assert v1 is not None and registry.lookup("example.com", "v1beta1", "widgets") is not None
    assert registry.lookup("example.com", "v1alpha1", "widgets") is None, "not served"
    assert v1.subresources == ("status", "scale") and v1.short_names == ("wd",) and v1.categories == ("all",)
    assert [c.name for c in v1.columns] == ["Name", "Size", "Replicas", "Age"]
    assert registry.by_key("widgets.example.com").version == "v1", "every-kind loops see the storage version"
    assert ("example.com", "v1") in registry.group_versions()
    assert registry.group_versions().index(("example.com", "v1")) < registry.group_versions().index(("example.com", "v1beta1"))
    registry.remove_custom("widgets.example.com")
    assert registry.lookup("example.com", "v1", "widgets") is None and registry.get_key("widgets.example.com") is None


def test_objects_read_at_another_version_change_only_apiversion():
    registry = Registry()
    registry.set_custom("widgets.example.com", crds.served_types(established(widget_crd())))
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": "L"}}
    stored = Stored(obj, dumps(obj), 5)
    assert crds.as_served(registry.lookup("example.com", "v1", "widgets"), stored) is stored
    beta = crds.as_served(registry.lookup("example.com", "v1beta1", "widgets"), stored)
    assert beta.obj == {**obj, "apiVersion": "example.com/v1beta1"} and b'"example.com/v1beta1"' in beta.raw


@pytest.mark.parametrize("versions,preferred", [
    (["v1beta1", "v1", "v1alpha1"], ["v1", "v1beta1", "v1alpha1"]),
    (["v2", "v1", "v10beta1", "v2beta2", "foo"], ["v2", "v1", "v10beta1", "v2beta2", "foo"]),
], ids=["ga-beta-alpha", "majors-first"])
def test_version_priority(versions, preferred):
    assert sorted(versions, key=version_priority) == preferred


CELL_CASES = [
    ("string", "string", "L", "L"),
    ("string-of-a-list", "string", ["a.example.com"], '["a.example.com"]'),
    ("string-of-a-number", "string", 3, "3"),
    ("string-of-a-bool", "string", True, "true"),
    ("integer", "integer", 4, 4),
    ("integer-from-a-string", "integer", "4", None),
    ("boolean", "boolean", False, False),
    ("date", "date", "2026-01-01T11:57:00Z", "3m"),
    ("bad-date", "date", "yesterday", "<invalid>"),
    ("missing", "string", None, None),
]


@pytest.mark.parametrize("type_,value,cell", [c[1:] for c in CELL_CASES], ids=[c[0] for c in CELL_CASES])
def test_printer_cells_like_the_crd_table_convertor(type_, value, cell):
    assert printer_cell(type_, value, NOW) == cell


def test_gateway_table_from_the_vendored_crd():
    crd = established(yaml.safe_load((CRDS / "gateway.networking.k8s.io_gateways.yaml").read_text()))
    rt = next(t for t in crds.served_types(crd) if t.version == "v1")
    gw = {"metadata": {"name": "web", "creationTimestamp": (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")},
          "spec": {"gatewayClassName": "ambit-waypoint"},
          "status": {"addresses": [{"type": "IPAddress", "value": "10.0.0.7"}],
                     "conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "True"}]}}
    table = render_table(rt.columns, [gw], resource_version="1", now=NOW)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Class", "Address", "Programmed", "Age"]
    assert table["rows"][0]["cells"] == ["web", "ambit-waypoint", "10.0.0.7", "True", "5m"]
    bare = copy.deepcopy(gw)
    del bare["status"]
    assert render_table(rt.columns, [bare], resource_version="1", now=NOW)["rows"][0]["cells"] == ["web", "ambit-waypoint", None, None, "5m"]
