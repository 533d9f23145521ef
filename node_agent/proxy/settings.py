"""The proxy's settings: one frozen value, built once by the agent's configuration and passed in."""
from __future__ import annotations

from dataclasses import dataclass

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
TUNNEL_PORT = 15008


@dataclass(frozen=True, slots=True)
class ProxySettings:
    trust_domain: str = "cluster.local"
    """Clients at 15008 must hold a SPIFFE ID of this trust domain."""
    tunnel_port: int = TUNNEL_PORT
    """Port of every enrolled pod's tunnel listener; only tests move it."""
    connect_timeout: float = 5.0
    """Seconds for a TCP connect to a tunnel peer or an application before trying elsewhere."""
    handshake_timeout: float = 5.0
    """Seconds for the TLS handshake plus the tunnel header and answer."""
    max_endpoint_attempts: int = 3
    """Distinct endpoints tried before the application sees a failure."""
    drain_timeout: float = 5.0
    """Seconds open connections get to finish when a listener stops; then they are aborted."""
    reserved_ports: frozenset[int] = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, TUNNEL_PORT})
    """Ports never forwarded to: the proxy's own, so a crafted destination cannot loop."""

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "handshake_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"proxy setting {name}={getattr(self, name)!r} must be a positive number of seconds")
        if self.max_endpoint_attempts < 1:
            raise ValueError(f"proxy setting max_endpoint_attempts={self.max_endpoint_attempts!r} must be at least 1")
        if not 0 < self.tunnel_port < 65536:
            raise ValueError(f"proxy setting tunnel_port={self.tunnel_port!r} must be a TCP port (1-65535)")
