"""TLS contexts and SPIFFE checks, driven through in-memory handshakes (no sockets).

Certificates come from a tiny CA made here with ``cryptography`` so each refusal case can be built.
"""
from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node_agent.identity.errors import CertificateUnavailableError
from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.errors import PeerIdentityError, TlsSetupError
from node_agent.proxy.tls import (
    BUNDLE_RECHECK,
    TlsContexts,
    client_peer_check,
    describe_tls_error,
    load_chain_from_memory,
    peer_identity,
    server_peer_check,
)

NOW = dt.datetime.now(dt.timezone.utc)
BOTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
TD = "cluster.local"


@dataclass(frozen=True)
class Creds:
    chain_pem: bytes
    key_pem: bytes


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _key_usage(*, digital_signature: bool, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=not digital_signature, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False)


class MiniCa:
    def __init__(self, name: str = "ambit test root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = _pem(self.cert)

    def issue(
        self,
        *uris: str,
        eku: tuple = BOTH,
        digital_signature: bool = True,
        not_before: dt.timedelta = dt.timedelta(hours=-1),
        not_after: dt.timedelta = dt.timedelta(hours=24),
    ) -> Creds:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + not_before).not_valid_after(NOW + not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=digital_signature), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True)
        return Creds(_pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key))


class Certs:
    """A CertSource backed by a dict."""

    def __init__(self, bundle: bytes) -> None:
        self.bundle = bundle
        self.by_id: dict[SpiffeId, Creds] = {}

    def credentials(self, identity: SpiffeId) -> Creds | None:
        return self.by_id.get(identity)

    def trust_bundle(self) -> bytes:
        return self.bundle


CLIENT = SpiffeId(TD, "shop", "web")
SERVER = SpiffeId(TD, "shop", "cart")
CA = MiniCa()


def contexts(client_creds: Creds | None = None, server_creds: Creds | None = None,
             bundle: bytes = CA.bundle) -> TlsContexts:
    certs = Certs(bundle)
    certs.by_id[CLIENT] = client_creds or CA.issue(CLIENT.uri)
    certs.by_id[SERVER] = server_creds or CA.issue(SERVER.uri)
    return TlsContexts(certs=certs)


@dataclass
class Outcome:
    client: ssl.SSLObject
    server: ssl.SSLObject
    client_error: BaseException | None = None
    server_error: BaseException | None = None


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> Outcome:
    """Run both ends to completion (or failure) and exchange one byte each way."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    out = Outcome(client_ctx.wrap_bio(c_in, c_out, session=session),
                  server_ctx.wrap_bio(s_in, s_out, server_side=True))

    def step(obj: ssl.SSLObject, attr: str, action) -> None:
        if getattr(out, attr) is None:
            try:
                action(obj)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as exc:
                setattr(out, attr, exc)

    for _ in range(6):
        step(out.client, "client_error", lambda o: o.do_handshake())
        s_in.write(c_out.read())
        step(out.server, "server_error", lambda o: o.do_handshake())
        c_in.write(s_out.read())
    # One byte each way: in TLS 1.3 a refusal of the client's certificate reaches the client here.
    step(out.client, "client_error", lambda o: o.write(b"c"))
    step(out.server, "server_error", lambda o: o.write(b"s"))
    s_in.write(c_out.read())
    c_in.write(s_out.read())
    step(out.server, "server_error", lambda o: o.read(1))
    c_in.write(s_out.read())
    step(out.client, "client_error", lambda o: o.read(1))
    return out


def test_mutual_tls_with_expected_identities() -> None:
    tls = contexts()
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    assert out.client_error is None and out.server_error is None
    assert out.client.version() == "TLSv1.3"
    assert client_peer_check(out.client, expected=SERVER, address="10.0.0.2:15008") == SERVER
    assert server_peer_check(out.server, trust_domain=TD) == CLIENT
    assert out.client.selected_alpn_protocol() == "ambit-tunnel/1"


def test_sessions_are_resumed_per_destination() -> None:
    tls = contexts()
    client = tls.client(CLIENT)
    first = handshake(client.context, tls.server(SERVER))
    assert not first.client.session_reused
    client.remember(("10.0.0.2", SERVER), first.client)
    assert client.session(("10.0.0.3", SERVER)) is None
    second = handshake(client.context, tls.server(SERVER), session=client.session(("10.0.0.2", SERVER)))
    assert second.client.session_reused and second.server.session_reused
    # identities are still known on a resumed session
    assert client_peer_check(second.client, expected=SERVER, address="x") == SERVER
    assert server_peer_check(second.server, trust_domain=TD) == CLIENT
    # a resumed connection keeps the cached session (reading a new one costs as much as the handshake)
    cached = client.session(("10.0.0.2", SERVER))
    client.remember(("10.0.0.2", SERVER), second.client)
    assert client.session(("10.0.0.2", SERVER)) is cached
    client._clock = lambda: 1e12  # ... until it is older than SESSION_REFRESH
    client.remember(("10.0.0.2", SERVER), second.client)
    assert client.session(("10.0.0.2", SERVER)) is not cached


def test_contexts_are_cached_and_rebuilt_on_rotation() -> None:
    certs = Certs(CA.bundle)
    certs.by_id[CLIENT] = CA.issue(CLIENT.uri)
    tls = TlsContexts(certs=certs)
    first = tls.client(CLIENT)
    assert tls.client(CLIENT) is first
    certs.by_id[CLIENT] = CA.issue(CLIENT.uri)  # renewed
    assert tls.client(CLIENT) is not first


class CountingCreds:
    """Credentials whose PEMs count how often they are read (the manager serializes on every read)."""

    def __init__(self, creds: Creds) -> None:
        self._creds = creds
        self.reads = 0

    @property
    def chain_pem(self) -> bytes:
        self.reads += 1
        return self._creds.chain_pem

    @property
    def key_pem(self) -> bytes:
        self.reads += 1
        return self._creds.key_pem


def test_unchanged_credentials_are_not_read_again_per_connection() -> None:
    certs = Certs(CA.bundle)
    creds = CountingCreds(CA.issue(CLIENT.uri))
    certs.by_id[CLIENT] = creds  # type: ignore[assignment]
    tls = TlsContexts(certs=certs)
    first = tls.client(CLIENT)
    reads = creds.reads
    for _ in range(5):
        assert tls.client(CLIENT) is first
    assert creds.reads == reads
    certs.by_id[CLIENT] = None  # type: ignore[assignment]  # expired or withdrawn: asked every time
    with pytest.raises(TlsSetupError):
        tls.client(CLIENT)


def test_rotated_trust_bundle_reaches_new_connections_after_the_recheck_interval() -> None:
    certs = Certs(CA.bundle)
    certs.by_id[CLIENT] = CA.issue(CLIENT.uri)
    tls = TlsContexts(certs=certs)
    now = [1000.0]
    tls._clock = lambda: now[0]
    first = tls.client(CLIENT)
    certs.bundle = CA.bundle + MiniCa("next root").bundle
    assert tls.client(CLIENT) is first  # within BUNDLE_RECHECK
    now[0] += BUNDLE_RECHECK
    assert tls.client(CLIENT) is not first


def test_peer_identity_is_parsed_once_per_certificate() -> None:
    tls = contexts()
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    parsed = []

    class Spy:
        def getpeercert(self, binary_form: bool = False):
            if not binary_form:
                parsed.append(1)
            return out.server.getpeercert(binary_form)

    assert peer_identity(Spy()) == CLIENT  # type: ignore[arg-type]
    assert peer_identity(Spy()) == CLIENT  # type: ignore[arg-type]
    assert len(parsed) == 1


@pytest.mark.parametrize(
    ("side", "creds", "words"),
    [
        pytest.param("server", CA.issue(SERVER.uri, not_after=dt.timedelta(seconds=-5),
                                        not_before=dt.timedelta(days=-2)),
                     "certificate has expired", id="expired-server-leaf"),
        pytest.param("client", CA.issue(CLIENT.uri, not_after=dt.timedelta(seconds=-5),
                                        not_before=dt.timedelta(days=-2)),
                     "certificate has expired", id="expired-client-leaf"),
        pytest.param("client", CA.issue(CLIENT.uri, not_before=dt.timedelta(hours=1)),
                     "not yet valid", id="client-not-yet-valid"),
        pytest.param("client", CA.issue(CLIENT.uri, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
                     "certificate purpose", id="client-without-client-auth-eku"),
        pytest.param("server", CA.issue(SERVER.uri, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
                     "certificate purpose", id="server-without-server-auth-eku"),
        pytest.param("client", CA.issue(CLIENT.uri, digital_signature=False),
                     "certificate purpose", id="client-key-usage-without-signature"),
        pytest.param("client", MiniCa("another root").issue(CLIENT.uri),
                     "unable to get local issuer certificate", id="client-from-another-root"),
        pytest.param("server", MiniCa("another root").issue(SERVER.uri),
                     "unable to get local issuer certificate", id="server-from-another-root"),
    ],
)
def test_certificates_refused_by_openssl(side: str, creds: Creds, words: str) -> None:
    tls = contexts(**{f"{side}_creds": creds})
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    error = out.client_error if side == "server" else out.server_error
    assert isinstance(error, ssl.SSLCertVerificationError), (out.client_error, out.server_error)
    assert words in describe_tls_error(error)
    assert describe_tls_error(error).startswith("peer certificate refused: ")
    # the refused side's peer also fails: nobody ends up with a half-trusted connection
    assert (out.server_error if side == "server" else out.client_error) is not None


def test_wrong_server_identity_is_refused_by_the_client() -> None:
    tls = contexts(server_creds=CA.issue("spiffe://cluster.local/ns/shop/sa/impostor"))
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    assert out.client_error is None
    with pytest.raises(PeerIdentityError, match=r"presented spiffe://cluster.local/ns/shop/sa/impostor, expected "
                                                 r"spiffe://cluster.local/ns/shop/sa/cart"):
        client_peer_check(out.client, expected=SERVER, address="10.0.0.2:15008")


def test_client_of_another_trust_domain_is_refused_by_the_server() -> None:
    tls = contexts(client_creds=CA.issue("spiffe://evil.example/ns/shop/sa/web"))
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    with pytest.raises(PeerIdentityError, match="trust domain 'evil.example'"):
        server_peer_check(out.server, trust_domain=TD)


@pytest.mark.parametrize(
    ("uris", "words"),
    [
        pytest.param((), "0 URI SANs", id="no-uri"),
        pytest.param((CLIENT.uri, SERVER.uri), "2 URI SANs", id="two-uris"),
        pytest.param(("spiffe://cluster.local/not/a/workload",), "not a workload SPIFFE ID", id="bad-path"),
        pytest.param(("https://example.com/",), "not a workload SPIFFE ID", id="not-spiffe"),
    ],
)
def test_peer_identity_requires_one_workload_spiffe_id(uris: tuple[str, ...], words: str) -> None:
    tls = contexts(client_creds=CA.issue(*uris))
    out = handshake(tls.client(CLIENT).context, tls.server(SERVER))
    assert out.server_error is None
    with pytest.raises(PeerIdentityError, match=words):
        peer_identity(out.server)


def test_client_without_certificate_is_refused() -> None:
    tls = contexts()
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=CA.bundle.decode())
    out = handshake(bare, tls.server(SERVER))
    assert out.server_error is not None
    assert "certificate" in describe_tls_error(out.server_error)


def test_tls_1_2_is_refused() -> None:
    tls = contexts()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cadata=CA.bundle.decode())
    out = handshake(old, tls.server(SERVER))
    assert out.server_error is not None and out.client_error is not None


def test_mismatched_key_is_a_setup_error() -> None:
    good, other = CA.issue(CLIENT.uri), CA.issue(CLIENT.uri)
    tls = contexts(client_creds=Creds(good.chain_pem, other.key_pem))
    with pytest.raises(TlsSetupError, match="is the key the one the certificate was issued for"):
        tls.client(CLIENT)


def test_missing_credentials_are_a_setup_error() -> None:
    class Pending(Certs):
        def credentials(self, identity: SpiffeId) -> Creds | None:
            raise CertificateUnavailableError("certificate for web is pending")

    with pytest.raises(TlsSetupError, match="no certificate for spiffe://cluster.local/ns/shop/sa/nobody"):
        TlsContexts(certs=Certs(CA.bundle)).client(SpiffeId(TD, "shop", "nobody"))
    with pytest.raises(TlsSetupError, match="pending"):
        TlsContexts(certs=Pending(CA.bundle)).server(SERVER)


def test_keys_are_loaded_without_files_or_leaked_descriptors() -> None:
    creds = CA.issue(CLIENT.uri)
    before = set(os.listdir("/proc/self/fd"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    load_chain_from_memory(context, chain_pem=creds.chain_pem, key_pem=creds.key_pem)
    assert set(os.listdir("/proc/self/fd")) == before
