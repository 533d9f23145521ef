"""`ambit install` and `ambit uninstall` against the sandbox API and its controllers (no kubelets,
so `--no-wait`): what a second run changes (nothing), what pruning removes (objects the release
labelled that the rendering no longer has, never what something else owns), what uninstall leaves
(nothing of Ambit's, nor the namespace it created)."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SANDBOX = ("inst", 6)  # the api, cfg (with controllers) and kubectl fixtures: tests/integration/conftest.py
GATEWAY_API = ("gatewayclasses", "gateways", "grpcroutes", "httproutes", "referencegrants")


def ambit(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "ambitctl.cli", *args, "--kubeconfig", str(cfg.kubeconfig_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def issuer_values(tmp_path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path = tmp_path / "issuer.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"identity": {"issuer": {"tls": {
        "crtPEM": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "keyPEM": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()}}}}))
    return str(path)


def names(kubectl, kind: str, namespace: str = "ambit-system") -> set[str]:
    out = kubectl("get", kind, "-n", namespace, "-o", "json", check=False)
    return {o["metadata"]["name"] for o in json.loads(out.stdout)["items"]} if out.returncode == 0 else set()


def test_install_again_prune_and_uninstall(cfg, kubectl, tmp_path):
    first = ambit(cfg, "install", "--no-wait", "-f", issuer_values(tmp_path)).stdout
    assert "created Namespace ambit-system" in first and "created Secret ambit-system/ambit-ca" in first
    crds = [line for line in first.splitlines() if "CustomResourceDefinition" in line]
    assert crds == [f"ambit: created CustomResourceDefinition {k}.gateway.networking.k8s.io" for k in GATEWAY_API]
    assert first.index("CustomResourceDefinition") < first.index("Namespace ambit-system"), "CRDs first"
    assert {"ambit-ca"} <= names(kubectl, "secrets") and "ambit-trust-bundle" in names(kubectl, "configmaps")

    again = ambit(cfg, "install", "--no-wait", "-f", issuer_values(tmp_path)).stdout
    assert "configured Secret ambit-system/ambit-ca" in again  # a new issuer: the one object that changed
    assert "created" not in again and "pruned" not in again

    # the issuer is no longer given: the chart no longer renders its Secret and ConfigMap
    plain = ambit(cfg, "install", "--no-wait").stdout
    assert "pruned Secret ambit-system/ambit-ca (no longer in the chart)" in plain
    assert "pruned ConfigMap ambit-system/ambit-trust-bundle (no longer in the chart)" in plain
    assert "ambit-ca" not in names(kubectl, "secrets")

    # something another owner made, with the release's labels (as the CA's generated root has) stays
    deploy_uid = json.loads(kubectl("get", "deployment", "-n", "ambit-system", "ambit-identity", "-o", "json")
                            .stdout)["metadata"]["uid"]
    owned = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "ambit-trust-bundle", "namespace": "ambit-system",
        "labels": {"app.kubernetes.io/part-of": "ambit", "app.kubernetes.io/instance": "ambit"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "ambit-identity", "uid": deploy_uid}]},
        "data": {"root-cert.pem": "x"}}
    kubectl("create", "-f", "-", stdin=json.dumps(owned))
    quiet = ambit(cfg, "install", "--no-wait").stdout
    assert "pruned" not in quiet and "created" not in quiet and "configured" not in quiet, quiet
    assert "ambit-trust-bundle" in names(kubectl, "configmaps")

    gone = ambit(cfg, "uninstall", "--timeout", "60").stdout
    assert "deleted Namespace ambit-system (ambit install had created it)" in gone
    assert kubectl("get", "namespace", "ambit-system", check=False).returncode != 0
    roles = {o["metadata"]["name"] for o in json.loads(kubectl("get", "clusterroles", "-o", "json").stdout)["items"]}
    assert not {n for n in roles if n.startswith("ambit-")}
    assert "nothing to uninstall" in ambit(cfg, "uninstall", "--timeout", "10").stdout
    assert gateway_api_crds(kubectl) == [f"{k}.gateway.networking.k8s.io" for k in GATEWAY_API], "as helm: CRDs stay"


def gateway_api_crds(kubectl) -> list[str]:
    return sorted(o["metadata"]["name"] for o in json.loads(kubectl("get", "crd", "-o", "json").stdout)["items"]
                  if o["spec"]["group"] == "gateway.networking.k8s.io")


def test_install_keeps_crds_it_finds_and_uninstall_deletes_them_only_when_asked(cfg, kubectl):
    from ambitctl import chart
    from ambitctl.install import install, uninstall
    from sandbox.kube import api_client

    ambit(cfg, "install", "--no-wait")
    kubectl("annotate", "--overwrite", "crd", "gateways.gateway.networking.k8s.io", "gateway.networking.k8s.io/bundle-version=v1.9.0")
    again = ambit(cfg, "install", "--no-wait").stdout
    assert ("kept CustomResourceDefinition gateways.gateway.networking.k8s.io as it is (v1.9.0; the chart has v1.6.1): "
            "CRDs are never upgraded by an install") in again
    assert "created" not in again
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "other"},
        "spec": {"controllerName": "example.com/other"}}))
    said: list[str] = []
    api = api_client(cfg)
    try:
        uninstall(api, namespace="ambit-system", release="ambit", timeout=60, say=said.append,
                  crds=chart.render({}).crds)
        assert gateway_api_crds(kubectl) == []
        assert "deleted CustomResourceDefinition gatewayclasses.gateway.networking.k8s.io (and every object of its kind)" in said
        assert kubectl("get", "gatewayclass", check=False).returncode == 1
        # without the Gateway API CRDs there is no GatewayClass to install: waypoints off, as docs/install.md says
        install(api, chart.render({"waypoint": {"enabled": False}}), namespace="ambit-system", release="ambit",
                wait=None, say=said.append, skip_crds=True)
        assert gateway_api_crds(kubectl) == [], "--skip-crds"
        uninstall(api, namespace="ambit-system", release="ambit", timeout=60, say=said.append)
    finally:
        api.close()
