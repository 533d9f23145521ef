"""kube-proxy rules rendering (pure)."""
from __future__ import annotations

import pytest

from sandbox.node import kubeproxy as kp


def svc(name, ip, ports, ns="demo", **spec):
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports, **spec}}


def eps(svc_name, ports, endpoints, ns="demo", address_type="IPv4"):
    return {"metadata": {"name": f"{svc_name}-abc", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc_name}},
            "addressType": address_type, "ports": ports,
            "endpoints": [{"addresses": [ip], **({"conditions": {"ready": r}} if r is not None else {})}
                          for ip, r in endpoints]}


WEB = svc("web", "10.220.0.10", [{"name": "http", "port": 80, "protocol": "TCP"}])
WEB_EPS = eps("web", [{"name": "http", "port": 8080, "protocol": "TCP"}],
              [("10.210.2.3", True), ("10.210.1.2", None), ("10.210.1.9", False)])


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_ready_endpoints_are_spread_with_decreasing_probabilities():
    text = kp.render_rules([WEB], [WEB_EPS])
    sp = kp.service_ports([WEB], [WEB_EPS])[0]
    assert [e.ip for e in sp.endpoints] == ["10.210.1.2", "10.210.2.3"]  # not-ready one dropped, sorted
    svc_rules = _lines(text, f"-A {sp.svc_chain} ")
    assert len(svc_rules) == 2
    assert "--probability 0.5000000000" in svc_rules[0] and "statistic" not in svc_rules[1]
    assert (f'-A AMBIT-SERVICES -d 10.220.0.10/32 -m comment --comment "demo/web:http cluster IP" '
            f"-p tcp -m tcp --dport 80 -j {sp.svc_chain}") in text
    for ep in sp.endpoints:
        sep = sp.sep_chain(ep)
        assert f"-A {sep} -s {ep.ip}/32 " in text  # hairpin masquerade
        assert f"-j DNAT --to-destination {ep.ip}:8080" in text
        assert f":{sep} - [0:0]" in text


@pytest.mark.parametrize("n", [1, 2, 3, 5], ids=lambda n: f"{n}-endpoints")
def test_spread_is_uniform(n):
    endpoints = [(f"10.210.1.{i + 2}", True) for i in range(n)]
    text = kp.render_rules([WEB], [eps("web", [{"name": "http", "port": 8080}], endpoints)])
    probs = [float(line.split("--probability ")[1].split()[0]) for line in text.splitlines()
             if "--probability" in line]
    remaining, shares = 1.0, []
    for p in [*probs, 1.0]:
        shares.append(remaining * p)
        remaining *= 1 - p
    assert shares == pytest.approx([1 / n] * n)


def test_a_service_without_ready_endpoints_is_rejected_in_filter():
    text = kp.render_rules([WEB], [eps("web", [{"name": "http", "port": 8080}], [("10.210.1.9", False)])])
    nat, filt = text.split("*filter")
    assert "10.220.0.10" not in nat
    assert ('-A AMBIT-SERVICES -d 10.220.0.10/32 -m comment --comment "demo/web:http has no endpoints" '
            "-p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable") in filt


@pytest.mark.parametrize(
    "service",
    [
        svc("headless", "None", [{"port": 80}]),
        svc("ext", "", [{"port": 80}], type="ExternalName", externalName="example.org"),
        svc("v6", "fd00::1", [{"port": 80}]),
    ],
    ids=["headless", "external-name", "ipv6"],
)
def test_services_without_an_ipv4_cluster_ip_get_no_rules(service):
    text = kp.render_rules([service], [])
    assert "AMBIT-SVC-" not in text and "REJECT" not in text


def test_ports_match_by_name_and_protocol():
    dns = svc("dns", "10.220.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                     {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    slices = [eps("dns", [{"name": "dns", "port": 5353, "protocol": "UDP"}], [("10.210.1.7", True)])]
    text = kp.render_rules([dns], slices)
    assert "-p udp -m udp --dport 53 -j AMBIT-SVC-" in text
    assert "--to-destination 10.210.1.7:5353" in text
    assert '"demo/dns:dns-tcp has no endpoints" -p tcp -m tcp --dport 53 -j REJECT' in text


def test_endpoints_of_another_namespace_or_family_are_ignored():
    slices = [eps("web", [{"name": "http", "port": 8080}], [("10.210.1.2", True)], ns="other"),
              eps("web", [{"name": "http", "port": 8080}], [("fd00::2", True)], address_type="IPv6")]
    assert "has no endpoints" in kp.render_rules([WEB], slices)


def test_client_ip_affinity_uses_recent():
    sticky = svc("web", "10.220.0.10", [{"name": "http", "port": 80}], sessionAffinity="ClientIP",
                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    text = kp.render_rules([sticky], [WEB_EPS])
    assert text.count("--rcheck --seconds 60 --reap") == 2
    assert text.count("--rsource --set") == 2


def test_stale_chains_are_flushed_then_deleted_and_foreign_chains_untouched():
    live = kp.service_ports([WEB], [WEB_EPS])[0].svc_chain
    existing = {"AMBIT-SVC-OLDOLDOLDOLDOLD1", "AMBIT-SEP-OLDOLDOLDOLDOLD2", live, "KUBE-SVC-X", "AMBIT-INPOD"}
    text = kp.render_rules([WEB], [WEB_EPS], existing_chains=existing)
    assert ":AMBIT-SVC-OLDOLDOLDOLDOLD1 - [0:0]" in text and "-X AMBIT-SVC-OLDOLDOLDOLDOLD1" in text
    assert "-X AMBIT-SEP-OLDOLDOLDOLDOLD2" in text
    assert f"-X {live}" not in text
    assert "KUBE-SVC-X" not in text and "AMBIT-INPOD" not in text
    nat = text.split("COMMIT")[0]
    assert nat.index("-X AMBIT-SVC-OLD") > nat.rindex("-A ")  # deletes after every rule


def test_output_is_deterministic_and_chain_names_fit_iptables():
    a = kp.render_rules([WEB], [WEB_EPS])
    b = kp.render_rules([WEB], [dict(WEB_EPS, endpoints=list(reversed(WEB_EPS["endpoints"])))])
    assert a == b
    for line in a.splitlines():
        if line.startswith(":"):
            assert len(line[1:].split()[0]) <= 28


def test_parse_chains_reads_iptables_save():
    dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:AMBIT-SVC-ABC - [0:0]\n:AMBIT-SEP-DEF - [0:0]\n" \
           ":AMBIT-SERVICES - [0:0]\n-A AMBIT-SVC-ABC -j AMBIT-SEP-DEF\nCOMMIT\n"
    assert kp.parse_chains(dump) == {"AMBIT-SVC-ABC", "AMBIT-SEP-DEF"}
