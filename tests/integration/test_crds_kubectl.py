"""CustomResourceDefinitions on the sandbox API with the real kubectl, helm and Python client: the
vendored Gateway API CRDs, their kinds served at once, printer columns, schema validation, versions,
subresources, deletion, and the garbage collector with Gateways as owners."""
from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

SANDBOX = ("crdt", 7)  # the api, cfg (with controllers), kubectl and helm fixtures: tests/integration/conftest.py
CHART = Path(__file__).resolve().parents[2] / "deploy" / "charts" / "ambit"
CRDS = CHART / "crds"
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "grpcroutes", "httproutes", "referencegrants")

ROUTES = textwrap.dedent("""
    apiVersion: gateway.networking.k8s.io/v1
    kind: GatewayClass
    metadata:
      name: demo
    spec:
      controllerName: example.com/demo
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata:
      name: web
      namespace: default
    spec:
      gatewayClassName: demo
      listeners:
      - name: http
        port: 80
        protocol: HTTP
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata:
      name: shop
      namespace: default
    spec:
      parentRefs:
      - name: web
      hostnames: ["shop.example.com"]
      rules:
      - backendRefs:
        - name: shop
          port: 80
""")

WIDGETS = textwrap.dedent("""
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.example.com
    spec:
      group: example.com
      scope: Cluster
      names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
      versions:
      - name: v1
        served: true
        storage: true
        subresources:
          status: {}
          scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas, labelSelectorPath: .status.selector}
        additionalPrinterColumns:
        - {name: Size, type: string, jsonPath: .spec.size}
        - {name: Replicas, type: integer, jsonPath: .spec.replicas, priority: 1}
        - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [size]
                properties:
                  size: {type: string, enum: [S, M, L]}
                  replicas: {type: integer, minimum: 0, default: 1}
                  extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              status:
                type: object
                properties:
                  replicas: {type: integer}
                  selector: {type: string}
                  conditions:
                    type: array
                    items: {type: object, properties: {type: {type: string}, status: {type: string}}}
""")


@pytest.fixture(scope="module")
def api_client(api):
    c = config.new_client_from_config(config_file=str(api.kubeconfig))
    yield c
    c.close()


@pytest.fixture
def gateway_api(kubectl):
    """The chart's Gateway API CRDs, applied as their README says (server-side: they are big)."""
    kubectl("apply", "--server-side", "-f", str(CRDS))
    kubectl("wait", "--for", "condition=Established", "--timeout", "10s",
            *[f"crd/{name}.gateway.networking.k8s.io" for name in GATEWAY_API_CRDS])


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_kubectl_applies_the_vendored_crds_and_their_kinds_are_served_at_once(kubectl):
    out = kubectl("apply", "--server-side", "-f", str(CRDS)).stdout
    assert sorted(out.split("\n")[:-1]) == [
        f"customresourcedefinition.apiextensions.k8s.io/{n}.gateway.networking.k8s.io serverside-applied" for n in GATEWAY_API_CRDS]
    rows = table(kubectl("get", "crd").stdout)
    assert rows[0] == ["NAME", "CREATED", "AT"]
    assert [r[0] for r in rows[1:]] == [f"{n}.gateway.networking.k8s.io" for n in GATEWAY_API_CRDS]
    crd = json.loads(kubectl("get", "crd", "gateways.gateway.networking.k8s.io", "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]} == {
        "NamesAccepted": "True", "Established": "True", "KubernetesAPIApprovalPolicyConformant": "True"}
    assert crd["status"]["acceptedNames"]["shortNames"] == ["gtw"] and crd["status"]["storedVersions"] == ["v1"]
    assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == "v1.6.1"
    resources = table(kubectl("api-resources", "--api-group=gateway.networking.k8s.io", "--no-headers").stdout)
    assert [r[:2] for r in resources] == [["gatewayclasses", "gc"], ["gateways", "gtw"], ["grpcroutes", "gateway.networking.k8s.io/v1"],
                                          ["httproutes", "gateway.networking.k8s.io/v1"], ["referencegrants", "refgrant"]]


def test_gateway_and_httproute_with_their_printer_columns(kubectl, gateway_api):
    out = kubectl("apply", "-f", "-", stdin=ROUTES).stdout
    assert out.split("\n")[:3] == ["gatewayclass.gateway.networking.k8s.io/demo created",
                                   "gateway.gateway.networking.k8s.io/web created",
                                   "httproute.gateway.networking.k8s.io/shop created"]
    rows = table(kubectl("get", "gtw").stdout)
    assert rows[0] == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert rows[1][:3] == ["web", "demo", "Unknown"], "no address yet; Programmed defaults to Unknown (the CRD's status default)"
    assert table(kubectl("get", "httproutes").stdout)[1][:2] == ["shop", '["shop.example.com"]']
    both = kubectl("get", "gateway-api").stdout
    assert "gateway.gateway.networking.k8s.io/web" in both and "httproute.gateway.networking.k8s.io/shop" in both
    assert "gatewayclass.gateway.networking.k8s.io/demo" in both
    gw = json.loads(kubectl("get", "gateway", "web", "-o", "json").stdout)
    assert gw["spec"]["listeners"][0]["allowedRoutes"] == {"namespaces": {"from": "Same"}}, "the CRD's default"
    route = json.loads(kubectl("get", "httproute", "shop", "-o", "json").stdout)
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]

    kubectl("patch", "gtw", "web", "--subresource=status", "--type=merge", "-p", json.dumps({"status": {
        "addresses": [{"type": "IPAddress", "value": "10.0.0.7"}],
        "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    assert table(kubectl("get", "gtw", "web", "--no-headers").stdout)[0][:4] == ["web", "demo", "10.0.0.7", "True"]


def test_invalid_objects_are_refused_with_what_is_wrong(kubectl, gateway_api):
    bad = textwrap.dedent("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata:
          name: bad
          namespace: default
        spec:
          gatewayClassName: demo
          listeners:
          - name: http
            port: 70000
            protocol: HTTP
    """)
    res = kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert res.returncode == 1
    assert ('The Gateway "bad" is invalid: spec.listeners[0].port: Invalid value: 70000: '
            "spec.listeners[0].port in body should be less than or equal to 65535") in res.stderr
    unknown = bad.replace("port: 70000", "port: 8080").replace("  gatewayClassName: demo", "  gatewayClassName: demo\n  colour: blue")
    res = kubectl("apply", "-f", "-", stdin=unknown, check=False)
    assert res.returncode == 1 and 'The Gateway "bad" is invalid: spec.colour: field not declared in schema' in res.stderr
    missing = kubectl("create", "-f", "-", stdin=bad.replace("  gatewayClassName: demo\n", ""), check=False)
    assert missing.returncode == 1 and "spec.gatewayClassName: Required value" in missing.stderr
    assert kubectl("get", "gtw", "bad", check=False).returncode == 1

    lenient = kubectl("apply", "--validate=false", "-f", "-", stdin=unknown)
    assert lenient.stdout.strip() == "gateway.gateway.networking.k8s.io/bad created"
    assert "colour" not in json.loads(kubectl("get", "gtw", "bad", "-o", "json").stdout)["spec"], "unknown fields are pruned"
    warned = kubectl("apply", "--validate=warn", "-f", "-", stdin=unknown.replace("8080", "8081"))
    assert 'Warning: unknown field "spec.colour"' in warned.stderr
    kubectl("delete", "gtw", "bad")


def test_patch_types_of_custom_resources(kubectl, gateway_api):
    kubectl("apply", "-f", "-", stdin=ROUTES)
    res = kubectl("patch", "gtw", "web", "--type=strategic", "-p", '{"spec":{"gatewayClassName":"other"}}', check=False)
    assert res.returncode == 1 and "strategic merge patch is not supported for custom resources" in res.stderr
    kubectl("patch", "gtw", "web", "--type=merge", "-p", '{"spec":{"gatewayClassName":"other"}}')
    kubectl("patch", "gtw", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/listeners/0/port","value":8080}]')
    gw = json.loads(kubectl("get", "gtw", "web", "-o", "json").stdout)
    assert (gw["spec"]["gatewayClassName"], gw["spec"]["listeners"][0]["port"], gw["metadata"]["generation"]) == ("other", 8080, 3)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=ROUTES)
    assert kubectl("get", "gtw", "web", "-o", "jsonpath={.spec.gatewayClassName}").stdout == "demo"


def test_every_served_version_reads_the_same_object(kubectl, gateway_api):
    kubectl("apply", "-f", "-", stdin=ROUTES)
    beta = json.loads(kubectl("get", "gateways.v1beta1.gateway.networking.k8s.io", "web", "-o", "json").stdout)
    assert beta["apiVersion"] == "gateway.networking.k8s.io/v1beta1" and beta["spec"]["gatewayClassName"] == "demo"
    grant = textwrap.dedent("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: ReferenceGrant
        metadata: {name: from-routes, namespace: default}
        spec:
          from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
          to: [{group: "", kind: Service}]
    """)
    kubectl("apply", "-f", "-", stdin=grant)  # ReferenceGrant is stored at v1beta1 and served at v1 too
    v1 = json.loads(kubectl("get", "referencegrants.v1.gateway.networking.k8s.io", "from-routes", "-o", "json").stdout)
    v1beta1 = json.loads(kubectl("get", "referencegrants.v1beta1.gateway.networking.k8s.io", "from-routes", "-o", "json").stdout)
    assert (v1["apiVersion"], v1beta1["apiVersion"]) == ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
    assert v1["spec"] == v1beta1["spec"] and v1["metadata"]["uid"] == v1beta1["metadata"]["uid"]
    assert kubectl("apply", "-f", "-", stdin=grant).stdout.strip() == "referencegrant.gateway.networking.k8s.io/from-routes unchanged"


def test_a_crd_of_our_own_cluster_scoped_with_status_scale_and_wide_columns(kubectl):
    kubectl("apply", "-f", "-", stdin=WIDGETS)
    kubectl("wait", "--for", "condition=Established", "crd/widgets.example.com", "--timeout", "10s")
    kubectl("apply", "-f", "-", stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: M}\n")
    rows = table(kubectl("get", "wd").stdout)
    assert rows[0] == ["NAME", "SIZE", "READY"] and rows[1] == ["w1", "M"], "a path that finds nothing prints nothing"
    assert table(kubectl("get", "widgets", "-o", "wide").stdout) == [["NAME", "SIZE", "REPLICAS", "READY"], ["w1", "M", "1"]]
    assert kubectl("scale", "widget", "w1", "--replicas=3").stdout.strip() == "widget.example.com/w1 scaled"
    assert kubectl("get", "widget", "w1", "-o", "jsonpath={.spec.replicas}").stdout == "3"
    kubectl("patch", "widget", "w1", "--subresource=status", "--type=merge",
            "-p", '{"status":{"replicas":3,"selector":"app=w","conditions":[{"type":"Ready","status":"True"}]}}')
    scale = json.loads(kubectl("get", "--raw", "/apis/example.com/v1/widgets/w1/scale").stdout)
    assert scale["spec"] == {"replicas": 3} and scale["status"] == {"replicas": 3, "selector": "app=w"}
    kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"status":{"replicas":9}}')
    assert kubectl("get", "widget", "w1", "-o", "jsonpath={.status.replicas}").stdout == "3", "status changes only via /status"
    assert table(kubectl("get", "wd", "--no-headers").stdout)[0] == ["w1", "M", "True"]
    res = kubectl("apply", "-f", "-", stdin="apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: XL}\n", check=False)
    assert 'The Widget "w2" is invalid: spec.size: Unsupported value: "XL": supported values: "S", "M", "L"' in res.stderr

    v2 = WIDGETS.replace("  versions:\n", "  versions:\n  - name: v2\n    served: true\n    storage: false\n"
                         "    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n")
    assert v2 != WIDGETS
    kubectl("apply", "-f", "-", stdin=v2)
    moved = json.loads(kubectl("get", "widgets.v2.example.com", "w1", "-o", "json").stdout)
    assert moved["apiVersion"] == "example.com/v2" and moved["spec"]["size"] == "M"
    assert kubectl("delete", "crd", "widgets.example.com").stdout.strip() == \
        'customresourcedefinition.apiextensions.k8s.io "widgets.example.com" deleted'


def test_deleting_a_crd_deletes_its_objects_and_ends_their_watches(kubectl, api_client, gateway_api):
    kubectl("apply", "-f", "-", stdin=ROUTES)
    custom = client.CustomObjectsApi(api_client)
    listed = custom.list_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "httproutes")
    events: list[tuple[str, str]] = []

    def follow() -> None:
        for ev in watch.Watch().stream(custom.list_namespaced_custom_object, "gateway.networking.k8s.io", "v1", "default",
                                       "httproutes", resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=20):
            events.append((ev["type"], ev["object"]["metadata"]["name"]))

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    time.sleep(0.5)
    kubectl("delete", "crd", "httproutes.gateway.networking.k8s.io")
    watcher.join(10)
    assert not watcher.is_alive(), "the watch ends when its kind is no longer served"
    assert events == [("DELETED", "shop")]
    kubectl("apply", "--server-side", "-f", str(CRDS / "gateway.networking.k8s.io_httproutes.yaml"))
    assert kubectl("get", "httproutes", "-A", "--no-headers").stderr.strip() == "No resources found"


def test_the_dynamic_client_sees_a_kind_once_its_crd_exists(kubectl, api_client, tmp_path):
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    kubectl("delete", "crd", "widgets.example.com", "--ignore-not-found")
    dyn = DynamicClient(api_client, cache_file=str(tmp_path / "discovery.json"))  # not a stale one of an earlier run
    with pytest.raises(ResourceNotFoundError):
        dyn.resources.get(api_version="example.com/v1", kind="Widget")
    client.ApiextensionsV1Api(api_client).create_custom_resource_definition(yaml.safe_load(WIDGETS))
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    assert (widgets.name, widgets.namespaced, widgets.short_names) == ("widgets", False, ["wd"])
    first = widgets.get()
    seen: list[str] = []
    done = threading.Event()

    def follow() -> None:
        for ev in widgets.watch(resource_version=first.metadata.resourceVersion, timeout=10):
            seen.append(f"{ev['type']} {ev['object'].metadata.name} {ev['object'].spec.size}")
            if len(seen) == 2:
                done.set()
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.3)
    made = widgets.create(body={"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "py"},
                                "spec": {"size": "S", "unknown": 1}})
    assert made.spec.replicas == 1 and "unknown" not in made.spec
    widgets.patch(name="py", body={"spec": {"size": "L"}}, content_type="application/merge-patch+json")
    assert done.wait(10), seen
    assert seen == ["ADDED py S", "MODIFIED py L"]
    assert [w.metadata.name for w in widgets.get().items] == ["py"]
    with pytest.raises(ApiException) as err:
        widgets.patch(name="py", body={"spec": {"size": "XS"}}, content_type="application/merge-patch+json")
    assert err.value.status == 422 and json.loads(err.value.body)["details"]["causes"][0]["field"] == "spec.size"
    kubectl("delete", "crd", "widgets.example.com")


def test_helm_install_creates_the_crds_and_uninstall_keeps_them(helm, kubectl):
    kubectl("delete", "crd", *[f"{n}.gateway.networking.k8s.io" for n in GATEWAY_API_CRDS], "--ignore-not-found")
    out = helm("install", "ambit", str(CHART), "-n", "ambit-system", "--create-namespace", "--set", "waypoint.enabled=true").stdout
    assert "STATUS: deployed" in out
    names = [r[0] for r in table(kubectl("get", "crd", "--no-headers").stdout)]
    assert [n for n in names if n.endswith(".gateway.networking.k8s.io")] == [f"{n}.gateway.networking.k8s.io" for n in GATEWAY_API_CRDS]
    rows = table(kubectl("get", "gatewayclass").stdout)
    assert rows[1][:2] == ["ambit-waypoint", "ambit.dev/waypoint-controller"]
    helm("upgrade", "ambit", str(CHART), "-n", "ambit-system", "--set", "waypoint.enabled=true")
    helm("uninstall", "ambit", "-n", "ambit-system")
    assert kubectl("get", "gatewayclass", "--no-headers").stderr.strip() == "No resources found"
    assert len([r for r in table(kubectl("get", "crd", "--no-headers").stdout) if r[0].endswith(".gateway.networking.k8s.io")]) == 5


# ---- the garbage collector: Gateways own what a waypoint controller creates for them -------------


def _owned_by(gw: dict, name: str) -> dict:
    return {"ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": gw["metadata"]["name"],
                                 "uid": gw["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
            "name": name, "labels": {"gateway.networking.k8s.io/gateway-name": gw["metadata"]["name"]}}


def _waypoint(api_client, name: str) -> dict:
    custom = client.CustomObjectsApi(api_client)
    gw = custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "gateways", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespaced_service_account("default", {"metadata": _owned_by(gw, name)})
    core.create_namespaced_service("default", {"metadata": _owned_by(gw, name), "spec": {"ports": [{"port": 15008}]}})
    labels = {"app": name}
    apps.create_namespaced_deployment("default", {"metadata": _owned_by(gw, name), "spec": {
        "replicas": 0, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "proxy", "image": "ambit:dev"}]}}}})
    return gw


def _left(kubectl, name: str) -> list[str]:
    out = kubectl("get", "deployment,service,serviceaccount", "-n", "default", "-l",
                  f"gateway.networking.k8s.io/gateway-name={name}", "-o", "name").stdout
    return sorted(out.split())


def _wait(what: str, fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := fn()) is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_deleting_a_gateway_deletes_what_it_owns(cfg, kubectl, api_client, gateway_api, cascade):
    name = f"wp-{cascade}"
    _waypoint(api_client, name)
    assert _left(kubectl, name) == [f"deployment.apps/{name}", f"service/{name}", f"serviceaccount/{name}"]
    time.sleep(1)  # the collector has seen owner and dependents: nothing may go while the Gateway lives
    assert len(_left(kubectl, name)) == 3
    res = kubectl("delete", "gateway", name, f"--cascade={cascade}", "--timeout=30s")
    assert res.stdout.strip() == f'gateway.gateway.networking.k8s.io "{name}" deleted'
    if cascade == "foreground":
        assert _left(kubectl, name) == [], "kubectl waited for the Gateway, which went last"
    _wait("the Gateway's dependents to go", lambda: True if not _left(kubectl, name) else None)
    assert kubectl("get", "gateway", name, check=False).returncode == 1


def test_deleting_a_namespace_deletes_its_custom_resources(cfg, kubectl, gateway_api):
    kubectl("apply", "-f", "-", stdin=ROUTES)
    kubectl("create", "namespace", "routes")
    kubectl("apply", "-n", "routes", "-f", "-", stdin=ROUTES.replace("namespace: default", "namespace: routes"))
    assert table(kubectl("get", "gtw,httproute", "-n", "routes", "-o", "name").stdout) == [
        ["gateway.gateway.networking.k8s.io/web"], ["httproute.gateway.networking.k8s.io/shop"]]
    res = kubectl("delete", "namespace", "routes", "--timeout=30s")
    assert res.stdout.strip() == 'namespace "routes" deleted'
    assert kubectl("get", "gtw,httproute", "-A", "--field-selector", "metadata.namespace=routes", "-o", "name").stdout == ""
    assert table(kubectl("get", "gtw", "web", "-n", "default", "--no-headers").stdout)[0][0] == "web", "other namespaces keep theirs"
