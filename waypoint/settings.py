"""The waypoint's settings: one frozen tree, read from the environment its Deployment sets (the
waypoint controller writes that Deployment; ``waypoint.controller``). A bad value names the
variable, the value and what is expected."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.identity.settings import AgentSettings as IdentityAgentSettings
from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.settings import ProxySettings


class SettingsError(ValueError):
    """a setting has a value the waypoint cannot use"""


@dataclass(frozen=True)
class WaypointSettings:
    gateway: str
    """the Gateway this waypoint serves (``GATEWAY_NAME``); its Services opt in with ambit.dev/use-waypoint"""
    namespace: str
    """the Gateway's namespace (``POD_NAMESPACE``): the waypoint serves Services of this namespace"""
    pod_name: str
    service_account: str
    """the waypoint's own service account: its identity is spiffe://<trust domain>/ns/<ns>/sa/<this>"""
    trust_domain: str = "cluster.local"
    ca_ip: str = ""
    """the CA Service's ClusterIP (``AMBIT_CA_IP``), for clusters without DNS for Services (the sandbox)"""
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 15020
    """Prometheus /metrics"""
    health_port: int = 15021
    """kubelet readiness: /healthz/ready"""
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    """localhost only: /config_dump"""
    tunnel_port: int = 15008
    """the Gateway's ``mesh`` listener (protocol HBONE): node agents tunnel here"""
    drain_timeout: float = 10.0
    """seconds in-flight requests get after SIGTERM before their connections are closed"""
    identity: IdentityAgentSettings = field(default_factory=IdentityAgentSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def __post_init__(self) -> None:
        for var, value in (("GATEWAY_NAME", self.gateway), ("POD_NAMESPACE", self.namespace),
                           ("POD_NAME", self.pod_name), ("SERVICE_ACCOUNT", self.service_account)):
            if not value:
                raise SettingsError(f"{var} is empty; the waypoint's Deployment sets it (downward API)")

    @property
    def spiffe_id(self) -> SpiffeId:
        return SpiffeId.for_workload(self.trust_domain, self.namespace, self.service_account)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WaypointSettings:
        env = dict(os.environ if env is None else env)
        trust_domain = env.get("AMBIT_TRUST_DOMAIN", "cluster.local")
        defaults = IdentityAgentSettings()

        def number(var: str, default: float, kind: type = int) -> float:
            raw = env.get(var, str(default))
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{var}={raw!r} must be a {'port number' if kind is int else 'number'}") from None
            if value <= 0:
                raise SettingsError(f"{var}={raw!r} must be positive")
            return value

        try:
            identity = IdentityAgentSettings(
                ca_url=env.get("AMBIT_CA_URL", defaults.ca_url),
                token_path=Path(env.get("AMBIT_CA_TOKEN", str(defaults.token_path))),
                root_cert_path=Path(env.get("AMBIT_TRUST_BUNDLE", str(defaults.root_cert_path))),
            )
            proxy = ProxySettings(trust_domain=trust_domain)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        return cls(
            gateway=env.get("GATEWAY_NAME", ""),
            namespace=env.get("POD_NAMESPACE", ""),
            pod_name=env.get("POD_NAME", ""),
            service_account=env.get("SERVICE_ACCOUNT", ""),
            trust_domain=trust_domain,
            ca_ip=env.get("AMBIT_CA_IP", ""),
            metrics_port=int(number("AMBIT_METRICS_PORT", 15020)),
            health_port=int(number("AMBIT_HEALTH_PORT", 15021)),
            admin_port=int(number("AMBIT_ADMIN_PORT", 15000)),
            tunnel_port=int(number("AMBIT_TUNNEL_PORT", 15008)),
            drain_timeout=number("AMBIT_DRAIN_TIMEOUT", 10.0, float),
            identity=identity,
            proxy=proxy,
        )
