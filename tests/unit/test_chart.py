"""Ambit's Helm chart, rendered by Helm's own engine: schema, defaults, each documented value set
validated against Kubernetes' schemas, Helm's lint, and the security properties a reviewer checks."""
from __future__ import annotations

import datetime
import json
import re

import helm_python
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambitctl import chart
from ambitctl.errors import ChartError
from sandbox import mesh
from sandbox.config import SandboxConfig

CHART = chart.DEFAULT_CHART
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
STANDARD_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/component")


def _issuer() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


CRT, KEY = _issuer()
VALUE_SETS = {
    "defaults": {},
    "sandbox": mesh.values(SandboxConfig(name="chrt", index=7)),
    "trust-domain": {"trustDomain": "example.org"},
    "debug-fail-open": {"agent": {"logLevel": "debug"}, "cni": {"failClosed": False, "excludeNamespaces": ["monitoring"]}},
    "own-issuer": {"identity": {"issuer": {"tls": {"crtPEM": CRT, "keyPEM": KEY}}}},
    "image": {"image": {"repository": "registry.example/ambit", "tag": "0.1.0-rc1", "pullPolicy": "Never"}},
    "resources": {"agent": {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}},
                  "identity": {"replicas": 2, "certificateTTLHours": 12}},
    "waypoint": {"waypoint": {"enabled": True, "logLevel": "debug"}},
}
GATEWAY_API_KINDS = ("GatewayClass",)
"""custom resources: their schema is the Gateway API CRD's, not Kubernetes' built-in ones"""


def _render(values: dict) -> list[dict]:
    return [m.obj for m in chart.render(values).manifests]


def _by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


# ---- values.yaml and values.schema.json stay in step ------------------------------------------
def _leaf_paths(doc: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "nodeSelector"):
            out |= _leaf_paths(value, path + ".")
        else:
            out.add(path)
    return out


def _schema_paths(schema: dict, root: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        if "$ref" in sub:
            sub = root["definitions"][sub["$ref"].rsplit("/", 1)[1]]
            out.add(f"{prefix}{key}")
            continue
        if sub.get("type") == "object" and "properties" in sub:
            out |= _schema_paths(sub, root, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_every_value_is_in_the_schema_and_the_schema_has_nothing_else():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _leaf_paths(values) == _schema_paths(schema, schema) - {"global"}


def test_every_value_has_a_comment_line_above_it():
    """Each key of values.yaml, down to the leaves the schema knows (a ``resources`` block's own
    keys are Kubernetes', documented by the comment above ``resources``), has a comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    opaque_indent: int | None = None
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        if opaque_indent is not None and indent > opaque_indent:
            continue
        opaque_indent = indent if m.group(2) in ("resources", "tolerations", "nodeSelector") else None
        block = lines[i + 1] if i + 1 < len(lines) else ""
        is_group = line.rstrip().endswith(":") and block.startswith(m.group(1) + "  ") and m.group(2) not in (
            "resources", "tolerations")
        above = lines[i - 1].strip() if i else ""
        assert is_group or above.startswith("#"), f"values.yaml line {i + 1} ({line.strip()}) has no comment above it"


def test_every_schema_property_has_a_description():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, f"{path}{key}.")
            elif "$ref" not in sub:
                assert sub.get("description"), f"{path}{key} has no description in values.schema.json"
    walk(schema, "")


# ---- rendering -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendering_is_valid_kubernetes(name, kube):
    objs = _render(VALUE_SETS[name])
    assert objs
    for obj in objs:
        if obj["kind"] not in GATEWAY_API_KINDS:
            kubernetes_validate.validate(obj, kube, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_has_no_errors(name, tmp_path):
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(VALUE_SETS[name]))
    report = helm_python.lint(str(CHART), VALUE_SETS[name], strict=False, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_carries_the_standard_labels(name):
    for obj in _render(VALUE_SETS[name]):
        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "ambit"


def test_set_values_reach_the_rendering():
    text = chart.render(chart.values(sets=["trustDomain=example.org", "agent.logLevel=debug"])).yaml()
    assert "example.org" in text
    ds = _by_kind(_render(chart.values(sets=["agent.logLevel=debug"])), "DaemonSet")[0]
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMBIT_LOG_LEVEL"] == "debug"


def test_values_files_then_set_win_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("trustDomain: a.example\nagent: {logLevel: warn}\n")
    b.write_text("trustDomain: b.example\n")
    merged = chart.values(files=[str(a), str(b)], sets=["agent.logLevel=error"])
    assert merged == {"trustDomain": "b.example", "agent": {"logLevel": "error"}}


@pytest.mark.parametrize(
    ("sets", "names"),
    [
        (["agent.logLevel=loud"], "logLevel"),
        (["redirection.mode=ebpf"], "redirection/mode"),
        (["cni.failClosed=maybe"], "failClosed"),
        (["cni.binDir=relative/bin"], "binDir"),
        (["viz.enabled=true"], "viz/enabled"),
        (["agnet.logLevel=debug"], "agnet"),
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        ([f"identity.issuer.tls.crtPEM={CRT}"], "keyPEM"),
    ],
    ids=["log-level", "unbuilt-backend", "not-a-bool", "relative-path", "unbuilt-viz", "typo", "pull-policy",
         "cert-without-key"],
)
def test_bad_values_are_refused_naming_the_key(sets, names):
    with pytest.raises(ChartError, match=re.escape(names)):
        chart.render(chart.values(sets=sets))


def test_bad_values_file_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ChartError, match="must hold a mapping"):
        chart.values(files=[str(bad)])


def test_waypoint_controller_and_class_come_with_waypoint_enabled():
    assert not [o for o in _render({"waypoint": {"enabled": False}}) if "waypoint" in o["metadata"]["name"]]
    objs = _render(VALUE_SETS["waypoint"])
    (gc,) = _by_kind(objs, "GatewayClass")
    assert gc["metadata"]["name"] == "ambit-waypoint" and gc["spec"]["controllerName"] == "ambit.dev/waypoint-controller"
    (dep,) = [d for d in _by_kind(objs, "Deployment") if d["metadata"]["name"] == "ambit-waypoint-controller"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["ambit-waypoint", "controller"]
    assert "--waypoint-log-level=debug" in container["args"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # waypoint pods read only their own namespace: a ClusterRole the controller binds per namespace
    (reader,) = [r for r in _by_kind(objs, "ClusterRole") if r["metadata"]["name"] == "ambit-waypoint"]
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in reader["rules"])
    assert not [b for b in _by_kind(objs, "ClusterRoleBinding") if b["roleRef"]["name"] == "ambit-waypoint"]


# ---- what a security reviewer looks for ------------------------------------------------------
def test_agent_is_not_privileged_and_has_only_the_capabilities_it_needs():
    ds = _by_kind(_render({}), "DaemonSet")[0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc.get("privileged") is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "resources" in c and c["resources"]["requests"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert sorted(agent["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"/opt/cni/bin", "/etc/cni/net.d", "/var/run/netns", "/var/run/ambit"}


def test_rbac_has_no_wildcards_and_no_cluster_wide_secrets():
    objs = _render({})
    for role in _by_kind(objs, "ClusterRole") + _by_kind(objs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"
    for role in _by_kind(objs, "ClusterRole"):
        assert not any("secrets" in r["resources"] for r in role["rules"]), role["metadata"]["name"]
    secret_rules = [r for role in _by_kind(objs, "Role") for r in role["rules"] if "secrets" in r["resources"]]
    assert secret_rules and all(r.get("resourceNames") == ["ambit-ca"] or r["verbs"] == ["create"] for r in secret_rules)


def test_own_issuer_becomes_the_ca_secret_and_trust_bundle():
    objs = _render(VALUE_SETS["own-issuer"])
    secret = next(o for o in _by_kind(objs, "Secret") if o["metadata"]["name"] == "ambit-ca")
    import base64

    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == CRT
    assert base64.b64decode(secret["data"]["ca.key"]).decode() == KEY
    bundle = next(o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "ambit-trust-bundle")
    assert bundle["data"]["root-cert.pem"] == CRT
    assert not _by_kind(_render({}), "Secret"), "without an issuer no key material is rendered"


def test_sandbox_sets_only_values():
    """The sandbox's Ambit is the chart with its defaults but a grace period and the trust domain: node
    paths, the plugin's interpreter and the CA's address too (each sandbox node has its own filesystem;
    agents find the CA by its Service name without DNS)."""
    values = mesh.values(SandboxConfig(name="chrt", index=7))
    assert values == {"trustDomain": "cluster.local", "agent": {"terminationGracePeriodSeconds": 5}}
    ca_url = next(e["value"] for e in _by_kind(_render(values), "DaemonSet")[0]["spec"]["template"]["spec"]
                  ["containers"][0]["env"] if e["name"] == "AMBIT_CA_URL")
    assert ca_url == "https://ambit-identity.ambit-system.svc:15012"


def test_notes_tell_the_user_to_run_ambit_check():
    assert "ambit check" in chart.render({}).notes


def test_install_order_puts_rbac_before_workloads():
    kinds = [m.kind for m in chart.render({}).manifests]
    assert kinds.index("ServiceAccount") < kinds.index("ClusterRole") < kinds.index("DaemonSet")


def test_crds_are_the_gateway_api_experimental_channel_as_released():
    """Experimental, because HTTPRoute retry (GEP-1731) is not in the standard channel yet."""
    crds = chart.render({}).crds
    assert sorted(m.obj["spec"]["names"]["kind"] for m in crds) == ["GRPCRoute", "Gateway", "GatewayClass", "HTTPRoute", "ReferenceGrant"]
    versions = {m.obj["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] for m in crds}
    assert len(versions) == 1 and {m.obj["metadata"]["annotations"]["gateway.networking.k8s.io/channel"] for m in crds} == {"experimental"}
    assert all(m.obj["metadata"]["annotations"]["api-approved.kubernetes.io"].startswith("https://") for m in crds)
    readme = (CHART / "crds" / "README.md").read_text()
    assert f"**release {versions.pop()}**" in readme, "crds/README.md names the release the files come from"
    assert not _by_kind(_render(VALUE_SETS["waypoint"]), "CustomResourceDefinition"), "CRDs are never templated"
    (http_route,) = [m.obj for m in crds if m.obj["spec"]["names"]["kind"] == "HTTPRoute"]
    v1 = next(v for v in http_route["spec"]["versions"] if v["name"] == "v1")
    rule = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["items"]["properties"]
    assert {"retry", "timeouts", "backendRefs", "matches"} <= set(rule)
