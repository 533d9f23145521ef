from datetime import timedelta

import pytest

from node_agent.identity.errors import SettingsError
from node_agent.identity.settings import AgentSettings, CaSettings, IdentitySettings, ServerSettings


def test_defaults_are_consistent():
    s = IdentitySettings()
    assert s.node_agent_username == "system:serviceaccount:ambit-system:ambit-node-agent"
    assert s.serving_dns_names == ("ambit-identity.ambit-system.svc", "ambit-identity.ambit-system.svc.cluster.local")
    assert s.ca.workload_cert_ttl == s.agent.cert_ttl == timedelta(hours=24)
    assert s.agent.ca_url == "https://ambit-identity.ambit-system.svc:15012"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CaSettings(namespace="Ambit"), "ca.namespace='Ambit' is invalid: expected a namespace name"),
        (lambda: CaSettings(workload_cert_ttl=timedelta(0)), "ca.workload_cert_ttl"),
        (lambda: CaSettings(workload_cert_ttl=timedelta(days=8)), "at most ca.max_workload_cert_ttl"),
        (lambda: ServerSettings(port=70000), "server.port=70000"),
        (lambda: ServerSettings(extra_ips=("10.0.0.300",)), "server.extra_ips='10.0.0.300'"),
        (lambda: AgentSettings(ca_url="http://ca:15012"), "agent.ca_url='http://ca:15012' is invalid: expected an https://"),
        (lambda: AgentSettings(renew_fraction=1.0), "agent.renew_fraction=1.0"),
        (lambda: AgentSettings(retry_max=timedelta(0)), "agent.retry_max"),
        (lambda: IdentitySettings(trust_domain="Cluster.Local"), "trust_domain='Cluster.Local'"),
    ],
    ids=["namespace", "zero-ttl", "ttl-above-max", "port", "ip", "ca-url", "renew-fraction", "retry-max",
         "trust-domain"],
)
def test_bad_values_name_the_field(build, message):
    with pytest.raises(SettingsError) as info:
        build()
    assert message in str(info.value)
