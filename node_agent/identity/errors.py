"""The identity package's errors: one root, one class per thing a caller can act on.

Library errors (cryptography, aiohttp, the kubernetes client) are converted at the boundary and
raised ``from`` the original, so a log line says what to do and the traceback says why.
"""
from __future__ import annotations


class IdentityError(Exception):
    """Root of every error raised by ``node_agent.identity``."""


class SettingsError(IdentityError, ValueError):
    """A setting has a value the identity package cannot use; the message names the field."""


class SpiffeIdError(IdentityError, ValueError):
    """A string is not a SPIFFE ID of the form ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``."""


class CsrError(IdentityError, ValueError):
    """A certificate signing request is unusable (bad PEM, bad signature, key or SANs); HTTP 400."""


class CaError(IdentityError):
    """The CA's own material is missing, inconsistent or expired, so it cannot sign."""


class ClusterApiError(IdentityError):
    """The Kubernetes API could not answer (TokenReview, pods, the CA Secret); retry later."""


class RefusedError(IdentityError):
    """The CA refuses a caller; ``status`` is the HTTP status to answer with."""

    status = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnauthenticatedError(RefusedError):
    """The caller's token is missing, invalid or for another audience; HTTP 401."""

    status = 401


class ForbiddenError(RefusedError):
    """The caller is authenticated but may not have this identity; HTTP 403."""

    status = 403


class CaClientError(IdentityError):
    """The agent could not get a certificate from the CA."""


class CaUnavailableError(CaClientError):
    """The CA could not be reached or failed (network, timeout, 5xx); the agent retries with backoff."""


class CaRefusedError(CaClientError):
    """The CA answered with a refusal (4xx); ``status`` and ``reason`` are the CA's."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class CertificateUnavailableError(IdentityError):
    """The certificate manager holds no valid certificate for an identity (pending or expired)."""
