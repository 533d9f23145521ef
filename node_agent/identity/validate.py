"""Checks on a peer's certificate chain, for the proxy's TLS layer and for freshly issued certificates.

``verify_peer`` answers "which workload is this, and may I believe it?": the chain must lead to a root
of the bundle at the given time, the leaf must be an end-entity certificate with digitalSignature and
the extended key usage its role needs, and carry exactly one URI SAN that is a SPIFFE ID of the
expected trust domain (and, when given, the expected identity). It returns that ``SpiffeId`` or
raises ``PeerCertificateError`` whose ``reason`` says which rule failed.

The OpenSSL handshake already checks signatures; this runs after it (on ``getpeercert(True)`` plus
the chain) and is what decides identity. Signatures and path building use cryptography's verifier;
times, usages and names are checked here first so each failure gets its own reason.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from node_agent.identity.errors import IdentityError, SpiffeIdError
from node_agent.identity.spiffe import SpiffeId


class Rejection(enum.StrEnum):
    MALFORMED = "malformed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    UNTRUSTED = "untrusted root"
    LEAF_IS_CA = "leaf is a CA"
    WRONG_KEY_USAGE = "wrong key usage"
    WRONG_SAN = "wrong SAN"
    WRONG_TRUST_DOMAIN = "wrong trust domain"
    UNEXPECTED_IDENTITY = "unexpected identity"


class PeerCertificateError(IdentityError):
    """A peer's certificate chain is not acceptable; ``reason`` is the rule it broke."""

    def __init__(self, reason: Rejection, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Usage(enum.Flag):
    """What the leaf must be good for: SERVER_AUTH when the peer is the TLS server, CLIENT_AUTH when a client."""

    SERVER_AUTH = enum.auto()
    CLIENT_AUTH = enum.auto()


_EKU_OIDS = {Usage.SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH, Usage.CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH}
_EKU_NAMES = {Usage.SERVER_AUTH: "serverAuth", Usage.CLIENT_AUTH: "clientAuth"}


def parse_chain(chain: Sequence[x509.Certificate | bytes | str] | bytes | str) -> list[x509.Certificate]:
    """Certificates from a PEM bundle, or a sequence of certificates / DER bytes / PEM strings."""
    items: Sequence[x509.Certificate | bytes | str]
    if isinstance(chain, (bytes, str)):
        data = chain.encode("ascii", "replace") if isinstance(chain, str) else chain
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise PeerCertificateError(Rejection.MALFORMED, f"the chain is not PEM certificates: {exc}") from exc
    items = chain
    certs: list[x509.Certificate] = []
    for i, item in enumerate(items):
        if isinstance(item, x509.Certificate):
            certs.append(item)
            continue
        try:
            if isinstance(item, str):
                certs.append(x509.load_pem_x509_certificate(item.encode("ascii", "replace")))
            else:
                certs.append(x509.load_der_x509_certificate(bytes(item)))
        except ValueError as exc:
            raise PeerCertificateError(Rejection.MALFORMED, f"certificate {i} of the chain cannot be read: {exc}") from exc
    return certs


def verify_peer(
    chain: Sequence[x509.Certificate | bytes | str] | bytes | str,
    *,
    roots: Sequence[x509.Certificate],
    trust_domain: str,
    usage: Usage,
    at: datetime,
    expected: SpiffeId | None = None,
) -> SpiffeId:
    """The SPIFFE ID of a peer's leaf (``chain[0]``, intermediates after it), or ``PeerCertificateError``."""
    certs = parse_chain(chain)
    if not certs:
        raise PeerCertificateError(Rejection.MALFORMED, "the peer presented no certificate")
    if not roots:
        raise PeerCertificateError(Rejection.UNTRUSTED, "the trust bundle is empty; load root-cert.pem first")
    leaf, intermediates = certs[0], certs[1:]

    constraints = _basic_constraints(leaf)
    if constraints is not None and constraints.ca:
        raise PeerCertificateError(Rejection.LEAF_IS_CA, "the peer's leaf certificate is a CA certificate")

    for i, cert in enumerate(certs):
        what = "the leaf certificate" if i == 0 else f"intermediate {i} ({cert.subject.rfc4514_string()})"
        if at < cert.not_valid_before_utc:
            raise PeerCertificateError(
                Rejection.NOT_YET_VALID,
                f"{what} is valid from {cert.not_valid_before_utc.isoformat()}, after {at.isoformat()}; "
                "is one of the clocks wrong?",
            )
        if at > cert.not_valid_after_utc:
            raise PeerCertificateError(
                Rejection.EXPIRED, f"{what} expired at {cert.not_valid_after_utc.isoformat()}"
            )

    _verify_path(leaf, intermediates, roots=roots, at=at)
    _check_usage(leaf, usage)
    identity = _spiffe_id_of(leaf)
    if identity.trust_domain != trust_domain:
        raise PeerCertificateError(
            Rejection.WRONG_TRUST_DOMAIN,
            f"the peer is {identity}, in trust domain {identity.trust_domain!r}; expected {trust_domain!r}",
        )
    if expected is not None and identity != expected:
        raise PeerCertificateError(Rejection.UNEXPECTED_IDENTITY, f"the peer is {identity}; expected {expected}")
    return identity


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise PeerCertificateError(Rejection.MALFORMED, f"the leaf's extensions cannot be read: {exc}") from exc


def _verify_path(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], *, roots: Sequence[x509.Certificate], at: datetime
) -> None:
    # the client verifier builds and checks the path (signatures, CA constraints, validity) without
    # asking for a DNS name; the leaf's own extensions are checked by us, so its policy permits all
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .time(at)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        builder.build_client_verifier().verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise PeerCertificateError(
            Rejection.UNTRUSTED, f"the chain does not lead to a root of the trust bundle ({exc})"
        ) from exc


def _check_usage(leaf: x509.Certificate, usage: Usage) -> None:
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is None or not ku.digital_signature:
        raise PeerCertificateError(Rejection.WRONG_KEY_USAGE, "the leaf's keyUsage lacks digitalSignature")
    try:
        eku = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    missing = [_EKU_NAMES[u] for u in (Usage.SERVER_AUTH, Usage.CLIENT_AUTH) if u in usage and _EKU_OIDS[u] not in eku]
    if missing:
        raise PeerCertificateError(
            Rejection.WRONG_KEY_USAGE, f"the leaf's extendedKeyUsage lacks {' and '.join(missing)}"
        )


def _spiffe_id_of(leaf: x509.Certificate) -> SpiffeId:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerCertificateError(Rejection.WRONG_SAN, "the leaf has no subjectAltName") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerCertificateError(
            Rejection.WRONG_SAN, f"the leaf has {len(uris)} URI SANs; a workload certificate has exactly one"
        )
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise PeerCertificateError(Rejection.WRONG_SAN, f"the leaf's URI SAN is not a workload SPIFFE ID: {exc}") from exc
