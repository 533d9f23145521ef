"""The CA's pure logic: its key and certificates, and signing workload CSRs. No I/O.

Material (the keys of the ``ambit-ca`` Secret):
- ``root-cert.pem``: the trust anchor(s) every agent trusts; several during a root rotation
- ``ca.crt``: the issuer certificate, optionally followed by intermediates up to (not including) the root
- ``ca.key``: the issuer's ECDSA P-256 private key, PKCS8 PEM, unencrypted

On first start the CA makes a self-signed root and uses the root itself as the issuer (``ca.crt`` is
then the same certificate as ``root-cert.pem``), as Istio's self-signed CA does: one key to protect,
chains of one certificate. An operator who keeps the root offline stores an intermediate in
``ca.crt``/``ca.key`` instead; every issued chain then carries ``ca.crt``'s certificates after the leaf.

Signing policy (``sign``): the CSR's signature must verify, its key must be ECDSA P-256, and it must
ask for exactly one SAN, the URI of the identity being issued. A CSR asking for anything else is
refused rather than silently rewritten, so a confused or malicious caller learns at once that its
key would have been bound to a name it did not ask for. The issued certificate's SAN is always built
from the authorized identity, never copied from the CSR.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node_agent.identity.clock import Clock
from node_agent.identity.errors import CaError, CsrError, SpiffeIdError
from node_agent.identity.spiffe import SpiffeId

SECRET_CA_CERT = "ca.crt"
SECRET_CA_KEY = "ca.key"
SECRET_ROOT_CERT = "root-cert.pem"
BUNDLE_ROOT_CERT = "root-cert.pem"
CERTIFICATES_PATH = "/v1/certificates"  # the CA's signing endpoint (server.py serves it, client.py calls it)

_MAX_CSR_BYTES = 16 * 1024


# ---- PEM helpers -------------------------------------------------------------------------------
def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificates_pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(certificate_pem(c) for c in certs)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted: for the CA Secret and for loading into an SSLContext in memory"""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_certificates(pem: bytes | str, *, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``CaError`` naming ``what`` when there is none or it is garbage."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaError(f"{what} is not a PEM certificate bundle: {exc}") from exc
    if not certs:
        raise CaError(f"{what} holds no certificate")
    return certs


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _is_p256(key: object) -> bool:
    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(
        key.curve, ec.SECP256R1
    )


# ---- CSRs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigningRequest:
    """A CSR that passed every check ``sign`` makes, with the identity it asks for."""

    csr: x509.CertificateSigningRequest
    identity: SpiffeId


def read_csr(csr_pem: bytes | str, *, trust_domain: str) -> SigningRequest:
    """Parse and check a CSR: PEM, signature, ECDSA P-256, exactly one SAN, a SPIFFE URI in ``trust_domain``."""
    data = csr_pem.encode("utf-8", "replace") if isinstance(csr_pem, str) else bytes(csr_pem)
    if len(data) > _MAX_CSR_BYTES:
        raise CsrError(f"the CSR is {len(data)} bytes; a workload CSR is under 1 KiB, the limit is {_MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CsrError(f"the CSR is not a PEM certificate request: {exc}") from exc
    try:
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.UnsupportedGeneralNameType) as exc:
        raise CsrError(f"the CSR cannot be read: {exc}") from exc
    if not signature_ok:
        raise CsrError("the CSR's signature does not verify; sign it with the key it carries")
    if not _is_p256(public_key):
        raise CsrError("the CSR's key is not ECDSA P-256; Ambit issues P-256 certificates only")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CsrError("the CSR has no subjectAltName; it must ask for exactly one spiffe:// URI") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrError(f"the CSR's extensions cannot be read: {exc}") from exc
    names = list(san)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(names) != 1 or len(uris) != 1:
        raise CsrError(
            f"the CSR asks for {len(names)} subjectAltName(s) ({', '.join(_describe(n) for n in names)}); "
            "it must ask for exactly one spiffe:// URI and nothing else"
        )
    try:
        identity = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise CsrError(f"the CSR's URI SAN is not a workload SPIFFE ID: {exc}") from exc
    if identity.trust_domain != trust_domain:
        raise CsrError(
            f"the CSR asks for {identity}, in trust domain {identity.trust_domain!r}; "
            f"this CA issues identities in {trust_domain!r} only"
        )
    return SigningRequest(csr=csr, identity=identity)


def _describe(name: x509.GeneralName) -> str:
    return f"{type(name).__name__}={name.value!r}"


# ---- the CA --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedChain:
    """What ``sign`` returns: the chain to present (leaf first, no root) and the root it leads to."""

    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def chain_pem(self) -> str:
        return certificates_pem(self.chain)

    @property
    def roots_pem(self) -> str:
        return certificates_pem(self.roots)

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc


class CertificateAuthority:
    """An issuer key and certificate plus the roots it chains to; signs workload and serving certificates."""

    def __init__(
        self,
        *,
        issuer_cert: x509.Certificate,
        issuer_key: ec.EllipticCurvePrivateKey,
        intermediates: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        trust_domain: str,
        clock: Clock,
        backdate: timedelta = timedelta(minutes=1),
    ) -> None:
        self.issuer_cert = issuer_cert
        self._issuer_key = issuer_key
        self.intermediates = tuple(intermediates)
        self.roots = tuple(roots)
        self.trust_domain = trust_domain
        self._clock = clock
        self._backdate = backdate
        self._check()
        # the chain handed out after each leaf: the issuer and its intermediates, unless the issuer is a root
        path = (issuer_cert, *self.intermediates)
        self._chain_tail = tuple(c for c in path if c not in self.roots)
        # a leaf may not outlive any certificate above it
        self.not_after = min(c.not_valid_after_utc for c in (*path, *self._anchor_of(path[-1])))

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls, *, trust_domain: str, ttl: timedelta, clock: Clock, backdate: timedelta = timedelta(minutes=1)
    ) -> "CertificateAuthority":
        """A fresh self-signed root (ECDSA P-256) that is its own issuer."""
        key = generate_key()
        now = clock.now()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "Ambit root CA"),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(issuer_cert=root, issuer_key=key, intermediates=(), roots=(root,), trust_domain=trust_domain,
                   clock=clock, backdate=backdate)

    @classmethod
    def from_secret_data(
        cls, data: Mapping[str, bytes], *, trust_domain: str, clock: Clock, backdate: timedelta = timedelta(minutes=1),
        source: str = "the CA Secret",
    ) -> "CertificateAuthority":
        """Load ``ca.crt``/``ca.key``/``root-cert.pem`` as stored in the Secret, checking they fit together."""
        missing = [k for k in (SECRET_CA_CERT, SECRET_CA_KEY, SECRET_ROOT_CERT) if not data.get(k)]
        if missing:
            raise CaError(f"{source} lacks {', '.join(missing)}; delete it to have a new CA made, or restore it")
        issuer, *intermediates = load_certificates(data[SECRET_CA_CERT], what=f"{source} key {SECRET_CA_CERT}")
        roots = load_certificates(data[SECRET_ROOT_CERT], what=f"{source} key {SECRET_ROOT_CERT}")
        try:
            key = serialization.load_pem_private_key(data[SECRET_CA_KEY], password=None)
        except (ValueError, TypeError) as exc:
            raise CaError(f"{source} key {SECRET_CA_KEY} is not an unencrypted PKCS8 PEM key: {exc}") from exc
        if not _is_p256(key):
            raise CaError(f"{source} key {SECRET_CA_KEY} is not an ECDSA P-256 key")
        return cls(issuer_cert=issuer, issuer_key=key, intermediates=intermediates, roots=roots,
                   trust_domain=trust_domain, clock=clock, backdate=backdate)

    def secret_data(self) -> dict[str, bytes]:
        """The Secret's data (raw bytes; the Kubernetes adapter base64-encodes)."""
        return {
            SECRET_CA_CERT: certificates_pem((self.issuer_cert, *self.intermediates)).encode("ascii"),
            SECRET_CA_KEY: private_key_pem(self._issuer_key),
            SECRET_ROOT_CERT: self.roots_pem.encode("ascii"),
        }

    @property
    def roots_pem(self) -> str:
        return certificates_pem(self.roots)

    def _check(self) -> None:
        if self.issuer_cert.public_key() != self._issuer_key.public_key():
            raise CaError("the CA key does not match the CA certificate (ca.key vs ca.crt); store the matching pair")
        path = (self.issuer_cert, *self.intermediates)
        for cert in path:
            _require_ca(cert)
        for child, parent in zip(path, path[1:]):
            _require_issued_by(child, parent, what="ca.crt")
        self._anchor_of(path[-1])

    def _anchor_of(self, top: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """the root that ``top`` (the last certificate of ca.crt) is, or is issued by"""
        if top in self.roots:
            return (top,)
        for root in self.roots:
            try:
                top.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return (root,)
        raise CaError("ca.crt does not chain to any certificate in root-cert.pem; store the root that issued it")

    # -- signing -----------------------------------------------------------------------------------
    def sign(self, csr_pem: bytes | str, *, identity: SpiffeId, ttl: timedelta) -> IssuedChain:
        """Issue a workload certificate for ``identity`` from a CSR that asks for exactly that identity."""
        request = read_csr(csr_pem, trust_domain=self.trust_domain)
        if request.identity != identity:
            raise CsrError(f"the CSR asks for {request.identity} but the certificate is for {identity}")
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)])
        return self._issue(request.csr.public_key(), san=san, ttl=ttl)

    def issue_serving_certificate(
        self, *, dns_names: Sequence[str], ips: Sequence[str], ttl: timedelta
    ) -> tuple[IssuedChain, ec.EllipticCurvePrivateKey]:
        """A TLS server certificate (and its new key) for the CA's own HTTPS endpoint."""
        key = generate_key()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        issued = self._issue(key.public_key(), san=x509.SubjectAlternativeName(names), ttl=ttl,
                             usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
        return issued, key

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        san: x509.SubjectAlternativeName,
        ttl: timedelta,
        usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    ) -> IssuedChain:
        if ttl <= timedelta(0):
            raise CsrError(f"the requested lifetime {ttl} is not positive")
        now = self._clock.now()
        if now >= self.not_after:
            raise CaError(
                f"the CA's certificates expired at {self.not_after.isoformat()}; rotate the CA Secret and restart the CA"
            )
        not_before = max(now - self._backdate, self.issuer_cert.not_valid_before_utc)
        not_after = min(now + ttl, self.not_after)
        issuer_ski = _ski_of(self.issuer_cert)
        cert = (
            x509.CertificateBuilder()
            # SPIFFE X509-SVIDs carry the identity in the SAN only; with an empty subject the SAN is critical
            .subject_name(x509.Name([]))
            .issuer_name(self.issuer_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(san, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
            .sign(self._issuer_key, hashes.SHA256())
        )
        return IssuedChain(chain=(cert, *self._chain_tail), roots=self.roots)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def _require_ca(cert: x509.Certificate) -> None:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CaError(f"ca.crt certificate {subject} is not a CA certificate (basicConstraints CA:TRUE missing)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise CaError(f"ca.crt certificate {subject} may not sign certificates (keyUsage lacks keyCertSign)")


def _require_issued_by(child: x509.Certificate, parent: x509.Certificate, *, what: str) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CaError(
            f"{what}: {child.subject.rfc4514_string()} is not issued by the next certificate "
            f"{parent.subject.rfc4514_string()}; list the issuer first, then each parent in order"
        ) from exc
