"""The node agent's one settings tree, read from the environment in one place (``from_env``).

Groups: the agent's own (node, files, ports) here; ``identity`` (how certificates are obtained)
and ``proxy`` (timeouts, ports) from their packages. A bad value names the variable, the value
and what is expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.identity.settings import AgentSettings as IdentityAgentSettings
from node_agent.identity.settings import IdentitySettings
from node_agent.proxy.settings import ProxySettings


REDIRECTION_MODES = ("iptables",)


class SettingsError(ValueError):
    """a setting has a value the agent cannot use"""


@dataclass(frozen=True)
class AgentSettings:
    node_name: str
    """the Kubernetes Node this agent serves (downward API: spec.nodeName)"""
    namespace: str = "ambit-system"
    """the agent's own namespace: where the trust-bundle ConfigMap lives"""
    trust_domain: str = "cluster.local"
    """SPIFFE trust domain of every identity on this mesh"""
    cni_socket: Path = Path("/var/run/ambit/cni.sock")
    """unix socket the CNI plugin talks to (must match the plugin config written by the installer)"""
    state_dir: Path = Path("/var/run/ambit")
    """per-pod records written at CNI ADD (netns path, IPs), read back after an agent restart"""
    admin_address: str = "127.0.0.1"
    """the admin endpoint (config dump) listens on localhost only: it shows the node's connections"""
    admin_port: int = 15000
    """admin port (config_dump)"""
    metrics_address: str = "0.0.0.0"
    """Prometheus scrapes the node's address"""
    metrics_port: int = 15020
    """Prometheus /metrics"""
    health_port: int = 15021
    """kubelet readiness: /healthz/ready"""
    cni_wait_for_pod: float = 5.0
    """seconds a CNI ADD waits for the pod to appear in the agent's watch before answering"""
    redirection_mode: str = "iptables"
    """in-pod redirection backend (the chart's ``redirection.mode``); only iptables is built"""
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def __post_init__(self) -> None:
        if self.redirection_mode not in REDIRECTION_MODES:
            raise SettingsError(f"AMBIT_REDIRECTION_MODE={self.redirection_mode!r} is not a redirection backend this agent "
                                f"has; use one of {', '.join(REDIRECTION_MODES)}")
        if not self.node_name:
            raise SettingsError("NODE_NAME is empty; set it from the downward API (fieldRef spec.nodeName)")
        for name in ("admin_port", "metrics_port", "health_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{name}={port!r} is not a TCP port (0-65535)")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "AgentSettings":
        env = dict(os.environ if env is None else env)
        trust_domain = env.get("AMBIT_TRUST_DOMAIN", "cluster.local")
        namespace = env.get("POD_NAMESPACE", "ambit-system")
        ia_defaults = IdentityAgentSettings()
        try:
            identity = IdentitySettings(
                trust_domain=trust_domain,
                agent=IdentityAgentSettings(
                    ca_url=env.get("AMBIT_CA_URL", ia_defaults.ca_url),
                    token_path=Path(env.get("AMBIT_CA_TOKEN", str(ia_defaults.token_path))),
                    root_cert_path=Path(env.get("AMBIT_TRUST_BUNDLE", str(ia_defaults.root_cert_path))),
                ),
            )
            proxy = ProxySettings(trust_domain=trust_domain)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc

        def port(var: str, default: int) -> int:
            raw = env.get(var, str(default))
            try:
                return int(raw)
            except ValueError:
                raise SettingsError(f"{var}={raw!r} must be a TCP port number") from None

        def seconds(var: str, default: float) -> float:
            raw = env.get(var, str(default))
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{var}={raw!r} must be a number of seconds") from None
            if value <= 0:
                raise SettingsError(f"{var}={raw!r} must be positive")
            return value

        return cls(
            node_name=env.get("NODE_NAME", ""),
            namespace=namespace,
            trust_domain=trust_domain,
            cni_socket=Path(env.get("AMBIT_CNI_SOCKET", "/var/run/ambit/cni.sock")),
            state_dir=Path(env.get("AMBIT_STATE_DIR", "/var/run/ambit")),
            admin_port=port("AMBIT_ADMIN_PORT", 15000),
            metrics_port=port("AMBIT_METRICS_PORT", 15020),
            health_port=port("AMBIT_HEALTH_PORT", 15021),
            cni_wait_for_pod=seconds("AMBIT_CNI_WAIT_FOR_POD", 5.0),
            redirection_mode=env.get("AMBIT_REDIRECTION_MODE", "iptables"),
            identity=identity,
            proxy=proxy,
        )
