from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from node_agent.identity.spiffe import SpiffeId
from node_agent.identity.validate import PeerCertificateError, Rejection, Usage, verify_peer

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "shop", "web")
BOTH = Usage.SERVER_AUTH | Usage.CLIENT_AUTH


class Authority:
    """A CA key and certificate (root or intermediate) for building test chains."""

    def __init__(self, name, *, parent=None, not_after=T0 + timedelta(days=365)):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        issuer = parent or self
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(issuer.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0 - timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
            .sign(issuer.key, hashes.SHA256())
        )


@dataclass
class Leaf:
    sans: list = field(default_factory=lambda: [x509.UniformResourceIdentifier(WEB.uri)])
    ekus: list | None = field(default_factory=lambda: [EKU.SERVER_AUTH, EKU.CLIENT_AUTH])
    digital_signature: bool = True
    is_ca: bool = False
    not_before: datetime = T0 - timedelta(minutes=1)
    not_after: datetime = T0 + timedelta(hours=24)

    def issue(self, issuer):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=self.is_ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(self.digital_signature, False, False, False, not self.digital_signature,
                              self.is_ca, False, False, False),
                critical=True,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        )
        if self.sans:
            b = b.add_extension(x509.SubjectAlternativeName(self.sans), critical=True)
        if self.ekus is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(self.ekus), critical=False)
        return b.sign(issuer.key, hashes.SHA256())


ROOT = Authority("root")
OTHER_ROOT = Authority("root")  # same name, different key: only the key decides
INTERMEDIATE = Authority("intermediate", parent=ROOT)
EXPIRED_INTERMEDIATE = Authority("old intermediate", parent=ROOT, not_after=T0 - timedelta(hours=1))


def pem(*certs):
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def test_valid_leaf_gives_its_identity():
    leaf = Leaf().issue(ROOT)
    assert verify_peer([leaf], roots=[ROOT.cert], trust_domain=TD, usage=BOTH, at=T0) == WEB


@pytest.mark.parametrize("chain_form", ["objects", "der", "pem-bundle", "pem-list"])
def test_accepted_chain_forms_with_intermediate(chain_form):
    leaf = Leaf().issue(INTERMEDIATE)
    chain = {
        "objects": [leaf, INTERMEDIATE.cert],
        "der": [c.public_bytes(serialization.Encoding.DER) for c in (leaf, INTERMEDIATE.cert)],
        "pem-bundle": pem(leaf, INTERMEDIATE.cert),
        "pem-list": [pem(leaf), pem(INTERMEDIATE.cert)],
    }[chain_form]
    assert verify_peer(chain, roots=[ROOT.cert], trust_domain=TD, usage=Usage.CLIENT_AUTH, at=T0,
                       expected=WEB) == WEB


def test_server_only_leaf_is_fine_as_a_server():
    leaf = Leaf(ekus=[EKU.SERVER_AUTH]).issue(ROOT)
    assert verify_peer([leaf], roots=[ROOT.cert], trust_domain=TD, usage=Usage.SERVER_AUTH, at=T0) == WEB


uri = x509.UniformResourceIdentifier


@pytest.mark.parametrize(
    "chain, usage, at, trust_domain, expected, reason, message",
    [
        (lambda: [Leaf().issue(ROOT)], BOTH, T0 + timedelta(hours=25), TD, None,
         Rejection.EXPIRED, "the leaf certificate expired at 2030-01-02T00:00:00+00:00"),
        (lambda: [Leaf().issue(ROOT)], BOTH, T0 - timedelta(hours=1), TD, None,
         Rejection.NOT_YET_VALID, "is one of the clocks wrong"),
        (lambda: [Leaf().issue(OTHER_ROOT)], BOTH, T0, TD, None,
         Rejection.UNTRUSTED, "does not lead to a root of the trust bundle"),
        (lambda: [Leaf().issue(INTERMEDIATE)], BOTH, T0, TD, None,  # intermediate not sent
         Rejection.UNTRUSTED, "does not lead to a root"),
        (lambda: [Leaf().issue(EXPIRED_INTERMEDIATE), EXPIRED_INTERMEDIATE.cert], BOTH, T0, TD, None,
         Rejection.EXPIRED, "intermediate 1 (CN=old intermediate) expired"),
        (lambda: [Leaf(sans=[]).issue(ROOT)], BOTH, T0, TD, None, Rejection.WRONG_SAN, "no subjectAltName"),
        (lambda: [Leaf(sans=[x509.DNSName("web.shop.svc")]).issue(ROOT)], BOTH, T0, TD, None,
         Rejection.WRONG_SAN, "has 0 URI SANs"),
        (lambda: [Leaf(sans=[uri(WEB.uri), uri("spiffe://cluster.local/ns/shop/sa/db")]).issue(ROOT)], BOTH, T0, TD,
         None, Rejection.WRONG_SAN, "has 2 URI SANs"),
        (lambda: [Leaf(sans=[uri("https://web.shop/")]).issue(ROOT)], BOTH, T0, TD, None,
         Rejection.WRONG_SAN, "not a workload SPIFFE ID"),
        (lambda: [Leaf(sans=[uri("spiffe://evil.example/ns/shop/sa/web")]).issue(ROOT)], BOTH, T0, TD, None,
         Rejection.WRONG_TRUST_DOMAIN, "in trust domain 'evil.example'; expected 'cluster.local'"),
        (lambda: [Leaf(digital_signature=False).issue(ROOT)], BOTH, T0, TD, None,
         Rejection.WRONG_KEY_USAGE, "keyUsage lacks digitalSignature"),
        (lambda: [Leaf(ekus=[EKU.SERVER_AUTH]).issue(ROOT)], Usage.CLIENT_AUTH, T0, TD, None,
         Rejection.WRONG_KEY_USAGE, "extendedKeyUsage lacks clientAuth"),
        (lambda: [Leaf(ekus=[EKU.CLIENT_AUTH]).issue(ROOT)], Usage.SERVER_AUTH, T0, TD, None,
         Rejection.WRONG_KEY_USAGE, "extendedKeyUsage lacks serverAuth"),
        (lambda: [Leaf(ekus=None).issue(ROOT)], BOTH, T0, TD, None,
         Rejection.WRONG_KEY_USAGE, "lacks serverAuth and clientAuth"),
        (lambda: [Leaf(is_ca=True).issue(ROOT)], BOTH, T0, TD, None, Rejection.LEAF_IS_CA, "is a CA certificate"),
        (lambda: [Leaf().issue(ROOT)], BOTH, T0, TD, SpiffeId.for_workload(TD, "shop", "db"),
         Rejection.UNEXPECTED_IDENTITY, "expected spiffe://cluster.local/ns/shop/sa/db"),
        (lambda: [], BOTH, T0, TD, None, Rejection.MALFORMED, "presented no certificate"),
        (lambda: [b"\x30\x03junk"], BOTH, T0, TD, None, Rejection.MALFORMED, "certificate 0 of the chain"),
        (lambda: "not pem at all", BOTH, T0, TD, None, Rejection.MALFORMED, "not PEM certificates"),
    ],
    ids=["expired", "not-yet-valid", "other-root", "missing-intermediate", "expired-intermediate", "no-san",
         "dns-san-only", "two-uris", "non-spiffe-uri", "wrong-trust-domain", "no-digital-signature",
         "server-only-as-client", "client-only-as-server", "no-eku", "leaf-is-ca", "unexpected-identity",
         "empty", "garbage-der", "garbage-pem"],
)
def test_rejections(chain, usage, at, trust_domain, expected, reason, message):
    with pytest.raises(PeerCertificateError) as info:
        verify_peer(chain(), roots=[ROOT.cert], trust_domain=trust_domain, usage=usage, at=at, expected=expected)
    assert info.value.reason is reason
    assert message in str(info.value)
    assert str(info.value).startswith(str(reason))


def test_empty_bundle_is_untrusted():
    with pytest.raises(PeerCertificateError) as info:
        verify_peer([Leaf().issue(ROOT)], roots=[], trust_domain=TD, usage=BOTH, at=T0)
    assert info.value.reason is Rejection.UNTRUSTED


def test_bundle_with_several_roots_accepts_either():
    for root in (ROOT, OTHER_ROOT):
        assert verify_peer([Leaf().issue(root)], roots=[OTHER_ROOT.cert, ROOT.cert], trust_domain=TD,
                           usage=BOTH, at=T0) == WEB
