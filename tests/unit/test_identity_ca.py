import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node_agent.identity.bootstrap import load_or_create_ca, publish_trust_bundle
from node_agent.identity.ca import CertificateAuthority, generate_key, private_key_pem, read_csr
from node_agent.identity.errors import CaError, CsrError
from node_agent.identity.settings import CaSettings, IdentitySettings
from node_agent.identity.spiffe import SpiffeId

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "shop", "web")


class FixedClock:
    def __init__(self, now=T0):
        self.t = now

    def now(self):
        return self.t

    async def sleep(self, seconds):
        raise AssertionError("the CA never sleeps")


def csr_for(*names, key=None, sign_key=None):
    key = key or generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    return builder.sign(sign_key or key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def uri(value):
    return x509.UniformResourceIdentifier(value)


@pytest.fixture
def clock():
    return FixedClock()


@pytest.fixture
def ca(clock):
    return CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=365), clock=clock)


# ---- sign ----------------------------------------------------------------------------------------
def test_signed_certificate_is_a_spiffe_workload_certificate(ca):
    key = generate_key()
    issued = ca.sign(csr_for(uri(WEB.uri), key=key), identity=WEB, ttl=timedelta(hours=24))

    leaf = issued.leaf
    assert issued.chain == (leaf,)  # the root is its own issuer: nothing between leaf and root
    assert issued.roots == ca.roots
    leaf.verify_directly_issued_by(ca.roots[0])
    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
    assert list(san.value) == [uri(WEB.uri)]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    root_ski = ca.roots[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def test_lifetime_is_backdated_one_minute_and_lasts_ttl(ca):
    issued = ca.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=24))
    assert issued.leaf.not_valid_before_utc == T0 - timedelta(minutes=1)
    assert issued.leaf.not_valid_after_utc == T0 + timedelta(hours=24)
    assert issued.not_after == T0 + timedelta(hours=24)


def test_lifetime_never_exceeds_the_issuer(clock):
    ca = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(hours=2), clock=clock)
    issued = ca.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=24))
    assert issued.leaf.not_valid_after_utc == ca.roots[0].not_valid_after_utc == T0 + timedelta(hours=2)


def test_expired_issuer_refuses_to_sign(clock, ca):
    clock.t = T0 + timedelta(days=366)
    with pytest.raises(CaError, match="expired .* rotate the CA Secret"):
        ca.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=1))


def test_serials_are_unique(ca):
    serials = {ca.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=1)).leaf.serial_number
               for _ in range(20)}
    assert len(serials) == 20


def _tampered_csr():
    pem = csr_for(uri(WEB.uri))
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "make_csr, identity, message",
    [
        (lambda: b"hello", WEB, "not a PEM certificate request"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", WEB,
         "not a PEM certificate request"),
        (lambda: csr_for(), WEB, "has no subjectAltName"),
        (lambda: csr_for(uri(WEB.uri), x509.DNSName("web.shop.svc")), WEB, "exactly one spiffe:// URI"),
        (lambda: csr_for(uri(WEB.uri), uri("spiffe://cluster.local/ns/shop/sa/db")), WEB, "exactly one"),
        (lambda: csr_for(x509.DNSName("web.shop.svc")), WEB, "exactly one spiffe:// URI"),
        (lambda: csr_for(uri("https://example.com/")), WEB, "not a workload SPIFFE ID"),
        (lambda: csr_for(uri("spiffe://other.domain/ns/shop/sa/web")), WEB, "this CA issues identities in"),
        (lambda: csr_for(uri("spiffe://cluster.local/ns/shop/sa/db")), WEB, "asks for spiffe://cluster.local/ns/shop/sa/db but"),
        (lambda: csr_for(uri(WEB.uri), key=ec.generate_private_key(ec.SECP384R1())), WEB, "not ECDSA P-256"),
        (lambda: csr_for(uri(WEB.uri), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), WEB,
         "not ECDSA P-256"),
        (_tampered_csr, WEB, "signature does not verify"),
        (lambda: b"x" * 20000, WEB, "the limit is"),
    ],
    ids=["garbage", "bad-der", "no-san", "extra-dns-san", "two-uris", "dns-only", "not-spiffe", "other-trust-domain",
         "other-identity", "p384", "rsa", "bad-signature", "huge"],
)
def test_sign_refuses_unsafe_csrs(ca, make_csr, identity, message):
    with pytest.raises(CsrError) as info:
        ca.sign(make_csr(), identity=identity, ttl=timedelta(hours=1))
    assert message in str(info.value)


def test_read_csr_returns_the_identity():
    assert read_csr(csr_for(uri(WEB.uri)), trust_domain=TD).identity == WEB


def test_sign_refuses_non_positive_ttl(ca):
    with pytest.raises(CsrError, match="not positive"):
        ca.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(0))


# ---- material: Secret round trip and intermediates ----------------------------------------------------
def test_secret_round_trip(ca, clock):
    data = ca.secret_data()
    assert set(data) == {"ca.crt", "ca.key", "root-cert.pem"}
    assert data["ca.key"].startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert data["ca.crt"] == data["root-cert.pem"]
    loaded = CertificateAuthority.from_secret_data(data, trust_domain=TD, clock=clock)
    issued = loaded.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=1))
    issued.leaf.verify_directly_issued_by(ca.roots[0])


def _intermediate(root_ca, *, clock, not_after=None):
    """An intermediate signed with the root's key, as an operator keeping the root offline would store it."""
    root_key = serialization.load_pem_private_key(root_ca.secret_data()["ca.key"], password=None)
    key = generate_key()
    root = root_ca.roots[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ambit intermediate")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(clock.now() - timedelta(hours=1))
        .not_valid_after(not_after or clock.now() + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return cert, key


def test_intermediate_issuer_puts_itself_in_the_chain(ca, clock):
    inter, key = _intermediate(ca, clock=clock, not_after=T0 + timedelta(hours=5))
    data = {
        "ca.crt": inter.public_bytes(serialization.Encoding.PEM),
        "ca.key": private_key_pem(key),
        "root-cert.pem": ca.roots_pem.encode(),
    }
    sub = CertificateAuthority.from_secret_data(data, trust_domain=TD, clock=clock)
    issued = sub.sign(csr_for(uri(WEB.uri)), identity=WEB, ttl=timedelta(hours=24))
    assert issued.chain[1:] == (inter,)
    issued.leaf.verify_directly_issued_by(inter)
    assert issued.leaf.not_valid_after_utc == T0 + timedelta(hours=5)  # capped by the intermediate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d, other: d.pop("ca.key"), "lacks ca.key"),
        (lambda d, other: d.update({"ca.key": other.secret_data()["ca.key"]}), "does not match the CA certificate"),
        (lambda d, other: d.update({"root-cert.pem": other.secret_data()["root-cert.pem"]}),
         "does not chain to any certificate in root-cert.pem"),
        (lambda d, other: d.update({"ca.crt": b"junk"}), "not a PEM certificate bundle"),
        (lambda d, other: d.update({"ca.key": b"junk"}), "not an unencrypted PKCS8 PEM key"),
        (lambda d, other: d.update({"ca.key": rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())}),
         "not an ECDSA P-256 key"),
    ],
    ids=["missing-key", "mismatched-key", "foreign-root", "garbage-cert", "garbage-key", "rsa-key"],
)
def test_broken_secret_is_refused_with_a_reason(ca, clock, mutate, message):
    other = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=1), clock=clock)
    data = dict(ca.secret_data())
    mutate(data, other)
    with pytest.raises(CaError, match=message):
        CertificateAuthority.from_secret_data(data, trust_domain=TD, clock=clock)


def test_serving_certificate_names_and_usage(ca):
    issued, key = ca.issue_serving_certificate(dns_names=["ambit-identity.ambit-system.svc"], ips=["127.0.0.1"],
                                               ttl=timedelta(hours=1))
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ambit-identity.ambit-system.svc"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = issued.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert issued.leaf.public_key() == key.public_key()


# ---- bootstrap: the Secret and the ConfigMap -----------------------------------------------------------
class FakeStore:
    def __init__(self):
        self.secrets, self.config_maps = {}, {}
        self.creates = self.cm_writes = 0
        self.before_create = None  # simulates another replica winning the race

    async def read_secret(self, *, namespace, name):
        return self.secrets.get((namespace, name))

    async def create_secret(self, *, namespace, name, data):
        self.creates += 1
        if self.before_create:
            self.before_create()
        if (namespace, name) in self.secrets:
            return False
        self.secrets[(namespace, name)] = dict(data)
        return True

    async def read_config_map(self, *, namespace, name):
        return self.config_maps.get((namespace, name))

    async def write_config_map(self, *, namespace, name, data):
        self.cm_writes += 1
        self.config_maps[(namespace, name)] = dict(data)


SETTINGS = IdentitySettings(ca=CaSettings(namespace="mesh"))


def test_first_start_creates_the_secret_and_publishes_the_bundle(clock):
    store = FakeStore()

    async def scenario():
        ca = await load_or_create_ca(store, settings=SETTINGS, clock=clock)
        assert await publish_trust_bundle(store, ca, settings=SETTINGS) is True
        assert await publish_trust_bundle(store, ca, settings=SETTINGS) is False  # unchanged: no write
        again = await load_or_create_ca(store, settings=SETTINGS, clock=clock)
        return ca, again

    ca, again = asyncio.run(scenario())
    assert store.creates == 1 and store.cm_writes == 1
    assert store.secrets[("mesh", "ambit-ca")]["root-cert.pem"].decode() == ca.roots_pem
    assert store.config_maps[("mesh", "ambit-trust-bundle")] == {"root-cert.pem": ca.roots_pem}
    assert again.roots == ca.roots


def test_create_race_uses_the_winners_material(clock):
    store = FakeStore()
    winner = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=1), clock=clock)
    store.before_create = lambda: store.secrets.setdefault(("mesh", "ambit-ca"), winner.secret_data())

    ca = asyncio.run(load_or_create_ca(store, settings=SETTINGS, clock=clock))
    assert ca.roots == winner.roots
    assert store.creates == 1


def test_stale_bundle_is_rewritten(clock):
    store = FakeStore()
    store.config_maps[("mesh", "ambit-trust-bundle")] = {"root-cert.pem": "old"}

    async def scenario():
        ca = await load_or_create_ca(store, settings=SETTINGS, clock=clock)
        return ca, await publish_trust_bundle(store, ca, settings=SETTINGS)

    ca, written = asyncio.run(scenario())
    assert written and store.config_maps[("mesh", "ambit-trust-bundle")]["root-cert.pem"] == ca.roots_pem
