import pytest

from node_agent.state.snapshot import build, is_enrolled, workload_name


def pod(name, *, ns="shop", uid=None, ip="10.210.1.5", node="node-1", labels=None, sa="web",
        owner=None, host_network=False, phase="Running"):
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"metadata": meta,
            "spec": {"nodeName": node, "serviceAccountName": sa, "hostNetwork": host_network},
            "status": {"podIP": ip, "phase": phase}}


def ns(name, **labels):
    return {"metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize(
    "pod_labels, ns_labels, expected",
    [
        ({}, {}, False),
        ({}, {"ambit.dev/dataplane-mode": "ambient"}, True),
        ({"ambit.dev/dataplane-mode": "none"}, {"ambit.dev/dataplane-mode": "ambient"}, False),
        ({"ambit.dev/dataplane-mode": "ambient"}, {}, True),
        ({"ambit.dev/dataplane-mode": "bogus"}, {"ambit.dev/dataplane-mode": "ambient"}, True),
        ({}, {"ambit.dev/dataplane-mode": "Ambient"}, False),
    ],
    ids=["nothing", "namespace", "pod-opt-out", "pod-opt-in", "unknown-pod-value", "case-sensitive"],
)
def test_enrolment(pod_labels, ns_labels, expected):
    assert is_enrolled(pod_labels, ns_labels) is expected


@pytest.mark.parametrize(
    "p, expected",
    [
        (pod("web-5d8f-abcde", labels={"pod-template-hash": "5d8f"}, owner=("ReplicaSet", "web-5d8f")), "web"),
        (pod("agent-x1", owner=("DaemonSet", "agent")), "agent"),
        (pod("bare"), "bare"),
        (pod("odd-abc", labels={"pod-template-hash": "zzz"}, owner=("ReplicaSet", "odd-rs")), "odd-rs"),
    ],
    ids=["deployment", "daemonset", "bare-pod", "rs-without-hash"],
)
def test_workload_name(p, expected):
    assert workload_name(p) == expected


def test_build_snapshot_services_endpoints_and_identity():
    svc = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.220.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    es = {"metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 8080}],
          "endpoints": [{"addresses": ["10.210.1.5"], "conditions": {"ready": True}, "nodeName": "node-1"},
                        {"addresses": ["10.210.2.7"], "conditions": {"ready": False}, "nodeName": "node-2"}]}
    snap = build(node="node-1", trust_domain="cluster.local",
                 namespaces=[ns("shop", **{"ambit.dev/dataplane-mode": "ambient"})],
                 pods=[pod("web-1"), pod("hostnet", ip="10.200.0.11", host_network=True)],
                 services=[svc], endpoint_slices=[es])
    w = snap.workloads_by_ip["10.210.1.5"]
    assert w.enrolled and w.identity == "spiffe://cluster.local/ns/shop/sa/web"
    assert "10.200.0.11" not in snap.workloads_by_ip, "host-network pods are not addressable workloads"
    service = snap.services_by_vip["10.220.0.10"]
    assert [(ep.ip, port) for ep, port in service.targets(80)] == [("10.210.1.5", 8080)]
    assert service.targets(81) == []
    assert [w.pod for w in snap.enrolled_local()] == ["web-1"]


def _resolver_fixture():
    from node_agent.state.resolver import SnapshotResolver
    from node_agent.state.snapshot import SnapshotHolder

    svc = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.220.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    api = {"metadata": {"name": "kubernetes", "namespace": "default"},
           "spec": {"clusterIP": "10.220.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}
    empty = {"metadata": {"name": "idle", "namespace": "shop"},
             "spec": {"clusterIP": "10.220.0.11", "ports": [{"name": "http", "port": 80}]}}
    slices = [
        {"metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"name": "http", "port": 8080}],
         "endpoints": [{"addresses": ["10.210.1.5"], "conditions": {"ready": True}},
                       {"addresses": ["10.210.2.6"], "conditions": {"ready": True}}]},
        {"metadata": {"name": "k-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
         "ports": [{"name": "https", "port": 6443}],
         "endpoints": [{"addresses": ["10.200.0.1"], "conditions": {"ready": True}}]},
    ]
    snap = build(node="node-1", trust_domain="cluster.local",
                 namespaces=[ns("shop", **{"ambit.dev/dataplane-mode": "ambient"}), ns("default")],
                 pods=[pod("web-1"), pod("web-2", ip="10.210.2.6", node="node-2", labels={"ambit.dev/dataplane-mode": "none"})],
                 services=[svc, api, empty], endpoint_slices=slices)
    return SnapshotResolver(SnapshotHolder(snap)), snap


@pytest.mark.parametrize(
    "ip, port, expected",
    [
        ("10.220.0.10", 80, ("mesh", [("10.210.1.5", 8080, True), ("10.210.2.6", 8080, False)])),
        ("10.220.0.10", 81, ("mesh", [])),
        ("10.220.0.11", 80, ("mesh", [])),
        ("10.220.0.1", 443, ("passthrough", None)),
        ("10.210.1.5", 9090, ("mesh", [("10.210.1.5", 9090, True)])),
        ("192.0.2.44", 80, ("passthrough", None)),
    ],
    ids=["service", "service-unknown-port", "service-no-endpoints", "non-pod-endpoints", "pod-ip", "outside"],
)
def test_resolver_routes(ip, port, expected):
    from node_agent.proxy import model

    resolver, snap = _resolver_fixture()
    source = snap.mesh_by_ip["10.210.1.5"]
    route = resolver.route(source=source, ip=ip, port=port)
    kind, endpoints = expected
    if kind == "passthrough":
        assert isinstance(route, model.Passthrough)
    else:
        assert isinstance(route, model.MeshRoute)
        assert [(e.workload.ip, e.port, e.workload.enrolled) for e in route.endpoints] == endpoints
    if ip.startswith("10.220."):
        assert route.service is not None and route.service.vip == ip


@pytest.mark.parametrize(
    "host, expected",
    [
        ("ambit-identity.ambit-system.svc", "10.220.0.10"),
        ("ambit-identity.ambit-system.svc.cluster.local", "10.220.0.10"),
        ("ambit-identity.ambit-system.svc.cluster.local.", "10.220.0.10"),
        ("headless.ambit-system.svc", None),
        ("ambit-identity.other.svc", None),
        ("ambit-identity.ambit-system", None),
        ("example.org", None),
    ],
    ids=["svc", "fqdn", "trailing-dot", "headless", "other-namespace", "no-svc-label", "not-a-service"],
)
def test_service_names_resolve_to_their_cluster_ip(host, expected):
    from node_agent.state.resolver import SnapshotResolver
    from node_agent.state.snapshot import SnapshotHolder

    services = [{"metadata": {"name": "ambit-identity", "namespace": "ambit-system"},
                 "spec": {"clusterIP": "10.220.0.10", "ports": [{"name": "https", "port": 15012}]}},
                {"metadata": {"name": "headless", "namespace": "ambit-system"},
                 "spec": {"clusterIP": "None", "ports": [{"name": "https", "port": 15012}]}}]
    snap = build(node="node-1", trust_domain="cluster.local", namespaces=[ns("ambit-system")], pods=[],
                 services=services, endpoint_slices=[])
    assert SnapshotResolver(SnapshotHolder(snap)).service_address(host) == expected


@pytest.mark.parametrize(
    "svc_labels, ns_labels, expected",
    [
        ({}, {}, ""),
        ({}, {"ambit.dev/use-waypoint": "waypoint"}, "waypoint"),
        ({"ambit.dev/use-waypoint": "canary"}, {"ambit.dev/use-waypoint": "waypoint"}, "canary"),
        ({"ambit.dev/use-waypoint": "none"}, {"ambit.dev/use-waypoint": "waypoint"}, ""),
        ({"gateway.networking.k8s.io/gateway-name": "waypoint"}, {"ambit.dev/use-waypoint": "waypoint"}, ""),
    ],
    ids=["nothing", "namespace", "service-wins", "service-opts-out", "the-waypoint-itself"],
)
def test_waypoint_binding(svc_labels, ns_labels, expected):
    from node_agent.state.snapshot import waypoint_of

    assert waypoint_of(svc_labels, ns_labels) == expected


def _waypoint_snapshot(*, waypoint_pods: bool):
    from node_agent.state.resolver import SnapshotResolver
    from node_agent.state.snapshot import SnapshotHolder

    def service(name, ip, port, target, labels=None):
        return {"metadata": {"name": name, "namespace": "shop", "labels": labels or {}},
                "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": port, "targetPort": target}]}}

    def slice_(svc, ip, port, ready=True):
        return {"metadata": {"name": f"{svc}-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": svc}},
                "ports": [{"name": "p", "port": port}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}, "nodeName": "node-1"}]}

    wp_labels = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    pods = [pod("web-1", ip="10.210.1.5", sa="web"), pod("web-2", ip="10.210.1.6", sa="web")]
    slices = [slice_("web", "10.210.1.5", 8080), slice_("web", "10.210.1.6", 8080, ready=False)]
    if waypoint_pods:
        pods.append(pod("waypoint-1", ip="10.210.1.9", sa="waypoint", labels=wp_labels))
        slices.append(slice_("waypoint", "10.210.1.9", 15008))
    snap = build(node="node-1", trust_domain="cluster.local",
                 namespaces=[ns("shop", **{"ambit.dev/dataplane-mode": "ambient", "ambit.dev/use-waypoint": "waypoint"})],
                 pods=pods,
                 services=[service("web", "10.220.0.10", 80, 8080),
                           service("waypoint", "10.220.0.20", 15008, 15008, wp_labels)],
                 endpoint_slices=slices)
    return snap, SnapshotResolver(SnapshotHolder(snap))


def test_service_bound_to_a_waypoint_routes_to_its_pods_and_guards_its_endpoints():
    from node_agent.proxy.model import MeshRoute

    snap, resolver = _waypoint_snapshot(waypoint_pods=True)
    src = snap.mesh_by_ip["10.210.1.5"]
    route = resolver.route(source=src, ip="10.220.0.10", port=80)
    assert isinstance(route, MeshRoute) and route.waypoint == "shop/waypoint"
    assert [(ep.workload.name, ep.port) for ep in route.endpoints] == [("waypoint-1", 15008)]
    assert route.service is not None and route.service.vip == "10.220.0.10"
    # both endpoints are guarded, ready or not; the waypoint's own service is not bound to itself
    for ip in ("10.210.1.5", "10.210.1.6"):
        guard = resolver.waypoint_guard(ip, 8080)
        assert guard is not None and guard.identities == {"spiffe://cluster.local/ns/shop/sa/waypoint"}
    assert resolver.waypoint_guard("10.210.1.5", 9090) is None
    wp_route = resolver.route(source=src, ip="10.220.0.20", port=15008)
    assert isinstance(wp_route, MeshRoute) and wp_route.waypoint == ""


def test_missing_waypoint_fails_closed():
    from node_agent.proxy.model import MeshRoute

    snap, resolver = _waypoint_snapshot(waypoint_pods=False)
    route = resolver.route(source=snap.mesh_by_ip["10.210.1.5"], ip="10.220.0.10", port=80)
    assert isinstance(route, MeshRoute) and route.endpoints == () and route.waypoint == "shop/waypoint"
    guard = resolver.waypoint_guard("10.210.1.5", 8080)
    assert guard is not None and guard.identities == frozenset()
