"""The agent's TCP metrics as Prometheus shows them: names, labels, values."""
from types import SimpleNamespace

from prometheus_client import generate_latest

from node_agent.metrics import MetricsObserver, TcpMetrics
from node_agent.proxy import model


def _record(rid, *, flags="-"):
    src = model.Workload(uid=model.WorkloadUid("u1"), name="web-1", namespace="shop", service_account="web",
                         ips=("10.0.0.1",), node="n1", workload_name="web")
    dst = model.Workload(uid=model.WorkloadUid("u2"), name="db-0", namespace="shop", service_account="db",
                         ips=("10.0.0.2",), node="n2", workload_name="db")
    return SimpleNamespace(
        id=rid, reporter="source", listener="outbound", source_ip="10.0.0.1", source_workload_name="web",
        source_namespace="shop", source_principal=str(src.identity), destination=dst,
        destination_principal=str(dst.identity),
        destination_service=model.ServiceTarget(name="db", namespace="shop", hostname="db.shop.svc.cluster.local",
                                                vip="10.96.0.9", port=5432),
        destination_address=("10.0.0.2", 5432), original_dst=("10.96.0.9", 5432), security_policy="mutual_tls",
        response_flags=flags, detail=None)


def test_counters_carry_istio_labels_and_bytes():
    metrics = TcpMetrics()
    obs = MetricsObserver(metrics)
    for rid in (1, 2):
        rec = _record(rid)
        obs.opened(rec)
        obs.closed(rec, SimpleNamespace(from_client=100, from_server=2000, duration=0.01))
    failed = _record(3, flags="UF")
    obs.opened(failed)
    obs.closed(failed, SimpleNamespace(from_client=0, from_server=0, duration=0.0))
    text = generate_latest(metrics.registry).decode()
    ok = ('{connection_security_policy="mutual_tls",destination_principal="spiffe://cluster.local/ns/shop/sa/db",'
          'destination_service="db.shop.svc.cluster.local",destination_workload="db",'
          'destination_workload_namespace="shop",reporter="source",response_flags="-",'
          'source_principal="spiffe://cluster.local/ns/shop/sa/web",source_workload="web",'
          'source_workload_namespace="shop"}')
    assert f"ambit_tcp_connections_opened_total{ok} 2.0" in text
    assert f"ambit_tcp_connections_closed_total{ok} 2.0" in text
    assert f"ambit_tcp_received_bytes_total{ok} 200.0" in text
    assert f"ambit_tcp_sent_bytes_total{ok} 4000.0" in text
    failed_lines = [line for line in text.splitlines() if line.startswith("ambit_tcp_connections_failed_total{")]
    assert len(failed_lines) == 1 and 'response_flags="UF"' in failed_lines[0] and failed_lines[0].endswith(" 1.0")
    assert "_created" not in text, "no *_created series: they double the series for nothing"
