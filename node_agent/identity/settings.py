"""The identity package's settings: one frozen tree, grouped by who uses it.

- ``IdentitySettings.ca``: the CA's material and the lifetimes it issues
- ``IdentitySettings.server``: the ``ambit identity serve`` HTTPS endpoint and its authorization
- ``IdentitySettings.agent``: the node agent's certificate manager (how it reaches the CA, renewal)

Built once (by the CLI, from flags/env) and passed explicitly; ``__post_init__`` rejects a bad value
naming the field, the value and what is expected.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from node_agent.identity.errors import SettingsError

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise SettingsError(f"identity setting {name}={value!r} is invalid: expected {expected}")


def _positive(name: str, value: timedelta) -> None:
    _require(isinstance(value, timedelta) and value > timedelta(0), name, value, "a positive duration")


@dataclass(frozen=True)
class CaSettings:
    namespace: str = "ambit-system"
    """namespace of the CA Secret and the trust-bundle ConfigMap (the chart's install namespace)"""
    secret_name: str = "ambit-ca"
    """Secret holding ca.crt, ca.key (PKCS8 PEM) and root-cert.pem; created on first start if missing"""
    trust_bundle_config_map: str = "ambit-trust-bundle"
    """ConfigMap publishing root-cert.pem for agents to mount as their initial trust anchor"""
    owner_deployment: str | None = None
    """the CA's Deployment; what the CA creates is owned by it and goes when Ambit is uninstalled"""
    root_ttl: timedelta = timedelta(days=3650)
    """lifetime of a self-signed root made on first start; long, because rotating it is a manual step"""
    workload_cert_ttl: timedelta = timedelta(hours=24)
    """lifetime of a workload certificate when the request names none (short: compromise heals quickly)"""
    max_workload_cert_ttl: timedelta = timedelta(days=7)
    """longest lifetime a caller may ask for; longer requests are refused with 400"""
    backdate: timedelta = timedelta(minutes=1)
    """notBefore is this far in the past so peers with slightly slow clocks accept a fresh certificate"""

    def __post_init__(self) -> None:
        _require(bool(_DNS_LABEL_RE.match(self.namespace)), "ca.namespace", self.namespace, "a namespace name")
        _require(bool(self.secret_name), "ca.secret_name", self.secret_name, "a Secret name")
        _require(bool(self.trust_bundle_config_map), "ca.trust_bundle_config_map", self.trust_bundle_config_map,
                 "a ConfigMap name")
        for name in ("root_ttl", "workload_cert_ttl", "max_workload_cert_ttl"):
            _positive(f"ca.{name}", getattr(self, name))
        _require(self.workload_cert_ttl <= self.max_workload_cert_ttl, "ca.workload_cert_ttl",
                 self.workload_cert_ttl, f"at most ca.max_workload_cert_ttl ({self.max_workload_cert_ttl})")
        _require(timedelta(0) <= self.backdate <= timedelta(hours=1), "ca.backdate", self.backdate,
                 "between 0 and 1 hour")


@dataclass(frozen=True)
class ServerSettings:
    listen_host: str = "0.0.0.0"
    """address the CA listens on; every node agent must reach it through the Service"""
    port: int = 15012
    """HTTPS port of the CA (Istio's CA port, so firewall rules written for istiod carry over)"""
    service_name: str = "ambit-identity"
    """Service in front of the CA; its DNS names go into the CA's serving certificate"""
    cluster_domain: str = "cluster.local"
    """cluster DNS suffix, for the <svc>.<ns>.svc.<cluster_domain> name in the serving certificate"""
    extra_ips: tuple[str, ...] = ()
    """IP SANs for the serving certificate, for agents that reach the CA by address (e.g. the sandbox)"""
    audience: str = "ambit-identity"
    """audience the agents' projected tokens must carry, so a token minted for the CA works nowhere else"""
    node_agent_service_account: str = "ambit-node-agent"
    """service account (in ca.namespace) of the node agents; only it may ask for workload identities"""
    serving_cert_ttl: timedelta = timedelta(hours=24)
    """lifetime of the CA's own serving certificate; it is re-issued at half-life"""
    max_request_bytes: int = 64 * 1024
    """largest request body accepted; a CSR is about 500 bytes"""
    api_timeout: float = 10.0
    """seconds to wait for the Kubernetes API (TokenReview, pod reads) before answering 503"""

    def __post_init__(self) -> None:
        _require(bool(self.listen_host), "server.listen_host", self.listen_host, "an address")
        _require(isinstance(self.port, int) and 0 <= self.port <= 65535, "server.port", self.port,
                 "a port number 0-65535 (0: any free port)")
        _require(bool(_DNS_LABEL_RE.match(self.service_name)), "server.service_name", self.service_name,
                 "a Service name")
        _require(bool(self.cluster_domain) and " " not in self.cluster_domain, "server.cluster_domain",
                 self.cluster_domain, "a DNS suffix such as cluster.local")
        for ip in self.extra_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                _require(False, "server.extra_ips", ip, "IP addresses such as 10.200.0.1")
        _require(bool(self.audience), "server.audience", self.audience, "a non-empty audience")
        _require(bool(self.node_agent_service_account), "server.node_agent_service_account",
                 self.node_agent_service_account, "a service account name")
        _positive("server.serving_cert_ttl", self.serving_cert_ttl)
        _require(self.max_request_bytes >= 4096, "server.max_request_bytes", self.max_request_bytes,
                 "at least 4096")
        _require(self.api_timeout > 0, "server.api_timeout", self.api_timeout, "a positive number of seconds")


@dataclass(frozen=True)
class AgentSettings:
    ca_url: str = "https://ambit-identity.ambit-system.svc:15012"
    """where the node agent asks for certificates; its host name must be in the CA's serving cert"""
    token_path: Path = Path("/var/run/secrets/ambit/tokens/ambit-identity")
    """projected service-account token (audience server.audience); re-read on every request as it rotates"""
    root_cert_path: Path = Path("/var/run/secrets/ambit/trust/root-cert.pem")
    """initial trust anchor (the mounted ambit-trust-bundle ConfigMap) used to verify the CA's serving cert"""
    cert_ttl: timedelta = timedelta(hours=24)
    """lifetime to ask for; the CA may shorten it (never past its issuer's expiry)"""
    renew_fraction: float = 0.5
    """renew when this fraction of the lifetime has passed (half-life, as Istio does)"""
    renew_jitter: float = 0.1
    """spread renewals by +/- this fraction so agents restarted together do not hit the CA together"""
    retry_initial: timedelta = timedelta(seconds=1)
    """first retry delay after a failed request; doubles on each failure"""
    retry_max: timedelta = timedelta(seconds=60)
    """cap on the retry delay, so a recovered CA is used within a minute"""
    request_timeout: float = 10.0
    """seconds for one certificate request, connect to response"""

    def __post_init__(self) -> None:
        parts = urlsplit(self.ca_url)
        _require(parts.scheme == "https" and bool(parts.hostname), "agent.ca_url", self.ca_url,
                 "an https:// URL such as https://ambit-identity.ambit-system.svc:15012")
        _positive("agent.cert_ttl", self.cert_ttl)
        _require(0.1 <= self.renew_fraction <= 0.9, "agent.renew_fraction", self.renew_fraction,
                 "a fraction between 0.1 and 0.9")
        _require(0.0 <= self.renew_jitter <= 0.5, "agent.renew_jitter", self.renew_jitter,
                 "a fraction between 0 and 0.5")
        _positive("agent.retry_initial", self.retry_initial)
        _require(self.retry_max >= self.retry_initial, "agent.retry_max", self.retry_max,
                 f"at least agent.retry_initial ({self.retry_initial})")
        _require(self.request_timeout > 0, "agent.request_timeout", self.request_timeout,
                 "a positive number of seconds")


@dataclass(frozen=True)
class IdentitySettings:
    trust_domain: str = "cluster.local"
    """SPIFFE trust domain of every identity the CA signs and every peer the agent accepts"""
    ca: CaSettings = field(default_factory=CaSettings)
    """the CA's material and lifetimes"""
    server: ServerSettings = field(default_factory=ServerSettings)
    """the CA's HTTPS endpoint and authorization"""
    agent: AgentSettings = field(default_factory=AgentSettings)
    """the node agent's certificate manager"""

    def __post_init__(self) -> None:
        _require(bool(self.trust_domain) and bool(_TRUST_DOMAIN_RE.match(self.trust_domain)), "trust_domain",
                 self.trust_domain, "a lowercase trust domain such as cluster.local")

    @property
    def node_agent_username(self) -> str:
        """the Kubernetes user name of the node agents' service account"""
        return f"system:serviceaccount:{self.ca.namespace}:{self.server.node_agent_service_account}"

    @property
    def serving_dns_names(self) -> tuple[str, ...]:
        """DNS SANs of the CA's serving certificate: the Service's names"""
        base = f"{self.server.service_name}.{self.ca.namespace}.svc"
        return (base, f"{base}.{self.server.cluster_domain}")
