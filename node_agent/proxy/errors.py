"""The proxy's errors: one root, one class per thing a caller can act on.

Library errors (``ssl``, ``OSError``) are converted where they cross into the proxy and raised
``from`` the original. Messages are lowercase and say what to check next.
"""
from __future__ import annotations


class ProxyError(Exception):
    """Root of every error raised by ``node_agent.proxy``."""


class HeaderError(ProxyError, ValueError):
    """Bytes that are not a tunnel header (or response) this agent understands."""


class MalformedHeaderError(HeaderError):
    """Wrong magic, a field out of bounds, a bad address or string: the peer is not speaking the protocol."""


class TruncatedHeaderError(HeaderError):
    """The stream ended before a complete header arrived."""


class UnsupportedVersionError(HeaderError):
    """The header's version (or a flag or critical field) is newer than this agent understands."""

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message)
        self.version = version


class TlsSetupError(ProxyError):
    """Credentials or a trust bundle cannot be turned into a TLS context (bad PEM, key mismatch, none yet)."""


class PeerIdentityError(ProxyError):
    """The TLS peer's certificate was refused: not verifiable, expired, wrong purpose or wrong SPIFFE ID."""


class UpstreamError(ProxyError):
    """A connection to the destination (tunnel peer or application) could not be established.

    ``flag`` is the Istio-style response flag to report (``UF``, ``URX``, ``NR`` ...) and
    ``retryable`` says whether another endpoint may be tried without the application noticing.
    """

    def __init__(self, message: str, *, flag: str = "UF", retryable: bool = True) -> None:
        super().__init__(message)
        self.flag = flag
        self.retryable = retryable
