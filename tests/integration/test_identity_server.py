"""The identity CA over real HTTPS on 127.0.0.1, with the Kubernetes API faked behind ``ClusterApi``."""
import asyncio
import logging
import socket
import ssl
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from node_agent.identity.authz import NodeAuthorizer, PodInfo, TokenReviewResult
from node_agent.identity.ca import CertificateAuthority, generate_key, private_key_pem
from node_agent.identity.client import HttpsCaClient
from node_agent.identity.clock import SystemClock
from node_agent.identity.errors import CaRefusedError, CaUnavailableError
from node_agent.identity.manager import CertificateManager
from node_agent.identity.server import IdentityServer, run
from node_agent.identity.settings import AgentSettings, IdentitySettings, ServerSettings
from node_agent.identity.spiffe import SpiffeId

TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "shop", "web")
DB = SpiffeId.for_workload(TD, "shop", "db")
AGENT = "system:serviceaccount:ambit-system:ambit-node-agent"
SETTINGS = IdentitySettings(server=ServerSettings(listen_host="127.0.0.1", port=0, extra_ips=("127.0.0.1",)))


def bound_review(username, pod, uid):
    return TokenReviewResult(
        authenticated=True, username=username, audiences=("ambit-identity",),
        extra={"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": [uid]},
    )


class FakeCluster:
    """TokenReview and pods as the API server would answer them: agent-1 on node-1, web on node-1, db on node-2."""

    def __init__(self):
        self.reviews = {
            "agent-token": bound_review(AGENT, "agent-1", "uid-a1"),
            "agent-token-rotated": bound_review(AGENT, "agent-1", "uid-a1"),
            "web-token": bound_review("system:serviceaccount:shop:web", "web-1", "uid-w1"),
        }
        self.pods = [
            PodInfo("ambit-system", "agent-1", "uid-a1", "node-1", "ambit-node-agent", "Running"),
            PodInfo("shop", "web-1", "uid-w1", "node-1", "web", "Running"),
            PodInfo("shop", "db-1", "uid-d1", "node-2", "db", "Running"),
        ]
        self.tokens_seen = []

    async def review_token(self, token, *, audience):
        self.tokens_seen.append(token)
        review = self.reviews.get(token)
        if review is None or audience != "ambit-identity":
            return TokenReviewResult(authenticated=False, error="invalid bearer token")
        return review

    async def get_pod(self, *, namespace, name):
        return next((p for p in self.pods if (p.namespace, p.name) == (namespace, name)), None)

    async def list_pods_on_node(self, *, namespace, node_name):
        return [p for p in self.pods if p.namespace == namespace and p.node_name == node_name]


def csr_pem(identity=WEB, key=None):
    key = key or generate_key()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def with_intermediate(root_ca):
    """The CA material an operator keeping the root offline would store: an intermediate as issuer."""
    root_key = serialization.load_pem_private_key(root_ca.secret_data()["ca.key"], password=None)
    key = generate_key()
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ambit intermediate")]))
        .issuer_name(root_ca.roots[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_ca.roots[0].public_key()),
                       critical=False)
        .sign(root_key, hashes.SHA256())
    )
    data = {"ca.crt": cert.public_bytes(serialization.Encoding.PEM), "ca.key": private_key_pem(key),
            "root-cert.pem": root_ca.roots_pem.encode()}
    return CertificateAuthority.from_secret_data(data, trust_domain=TD, clock=SystemClock())


class Harness:
    def __init__(self, ca, cluster, server):
        self.ca, self.cluster, self.server = ca, cluster, server
        self.url = f"https://127.0.0.1:{server.port}"
        self.ssl = ssl.create_default_context(cadata=ca.roots_pem)

    async def post(self, body, *, token="agent-token", raw=None):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with aiohttp.ClientSession() as session:
            kwargs = {"data": raw} if raw is not None else {"json": body}
            async with session.post(self.url + "/v1/certificates", headers=headers, ssl=self.ssl, **kwargs) as r:
                return r.status, await r.json()


def serve(scenario, *, intermediate=False):
    async def main():
        ca = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=365), clock=SystemClock())
        if intermediate:
            ca = with_intermediate(ca)
        cluster = FakeCluster()
        authorizer = NodeAuthorizer(cluster=cluster, audience="ambit-identity", node_agent_username=AGENT)
        server = IdentityServer(settings=SETTINGS, ca=ca, authorizer=authorizer, clock=SystemClock())
        await server.start()
        try:
            await scenario(Harness(ca, cluster, server))
        finally:
            await server.close()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftovers, f"tasks leaked: {leftovers}"

    asyncio.run(main())


def openssl_verify(tmp_path: Path, *, root: str, chain: list[str], purpose: str) -> subprocess.CompletedProcess:
    (tmp_path / "root.pem").write_text(root)
    (tmp_path / "chain.pem").write_text("".join(chain))
    (tmp_path / "leaf.pem").write_text(chain[0])
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(tmp_path / "root.pem"),
         "-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, timeout=30,
    )


# ---- the endpoint ------------------------------------------------------------------------------------
@pytest.mark.parametrize("intermediate", [False, True], ids=["root-issuer", "intermediate-issuer"])
def test_allowed_identity_gets_a_chain_openssl_verifies(tmp_path, intermediate):
    async def scenario(h):
        status, body = await h.post({"csr": csr_pem(WEB), "ttl_seconds": 3600})
        assert status == 201, body
        chain = body["certificate_chain"]
        assert len(chain) == (2 if intermediate else 1)
        assert body["root_cert"] == h.ca.roots_pem
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        assert expires == leaf.not_valid_after_utc
        assert timedelta(minutes=59) < expires - datetime.now(timezone.utc) <= timedelta(hours=1)
        for purpose in ("sslclient", "sslserver"):
            result = openssl_verify(tmp_path, root=body["root_cert"], chain=chain, purpose=purpose)
            assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr

    serve(scenario, intermediate=intermediate)


def test_openssl_refuses_the_chain_against_another_root(tmp_path):
    async def scenario(h):
        status, body = await h.post({"csr": csr_pem(WEB)})
        assert status == 201
        other = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=1), clock=SystemClock())
        result = openssl_verify(tmp_path, root=other.roots_pem, chain=body["certificate_chain"], purpose="sslclient")
        assert result.returncode != 0

    serve(scenario)


def test_default_lifetime_is_24h():
    async def scenario(h):
        status, body = await h.post({"csr": csr_pem(WEB)})
        assert status == 201
        leaf = x509.load_pem_x509_certificate(body["certificate_chain"][0].encode())
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=24, minutes=1)

    serve(scenario)


@pytest.mark.parametrize(
    "token, identity, status, reason",
    [
        ("web-token", DB, 403,
         "caller system:serviceaccount:shop:web may obtain only its own identity (ns/shop/sa/web), not "
         "spiffe://cluster.local/ns/shop/sa/db; only the node agent (system:serviceaccount:ambit-system:ambit-node-agent)"),
        ("agent-token", DB, 403,
         "no Running or Pending pod with service account 'db' in namespace 'shop' is on node 'node-1'"),
        ("stolen-token", WEB, 401, "the token was rejected by TokenReview: invalid bearer token"),
        (None, WEB, 401, "missing bearer token"),
    ],
    ids=["wrong-caller-sa", "identity-not-on-callers-node", "bad-token", "no-token"],
)
def test_refusals_answer_with_a_reason_and_log_it(caplog, token, identity, status, reason):
    async def scenario(h):
        got, body = await h.post({"csr": csr_pem(identity)}, token=token)
        assert got == status and list(body) == ["error"] and reason in body["error"], body

    with caplog.at_level(logging.WARNING, logger="node_agent.identity.server"):
        serve(scenario)
    lines = [r.getMessage() for r in caplog.records if r.name == "node_agent.identity.server"]
    assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize(
    "body, raw, reason",
    [
        ({"csr": "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"}, None,
         "the CSR is not a PEM certificate request"),
        ({"csr": "hello"}, None, "the CSR is not a PEM certificate request"),
        (None, b"{not json", "the body is not JSON"),
        ({"certificate": "x"}, None, "the body needs a 'csr' string"),
        ({"csr": csr_pem(WEB), "ttl_seconds": "3600"}, None, "must be a positive integer"),
        ({"csr": csr_pem(WEB), "ttl_seconds": 30 * 86400}, None, "exceeds the CA's maximum of 604800"),
        ({"csr": csr_pem(SpiffeId.for_workload("evil.example", "shop", "web"))}, None,
         "this CA issues identities in 'cluster.local' only"),
    ],
    ids=["garbage-csr", "not-pem", "not-json", "no-csr", "ttl-string", "ttl-too-long", "other-trust-domain"],
)
def test_bad_requests_get_400(body, raw, reason):
    async def scenario(h):
        status, answer = await h.post(body, raw=raw)
        assert status == 400 and reason in answer["error"], answer

    serve(scenario)


def test_cluster_api_outage_is_503_not_a_refusal():
    async def scenario(h):
        async def broken(token, *, audience):
            from node_agent.identity.errors import ClusterApiError
            raise ClusterApiError("TokenReview failed: HTTP 500 Internal Server Error")

        h.cluster.review_token = broken
        status, body = await h.post({"csr": csr_pem(WEB)})
        assert status == 503 and "cannot reach the Kubernetes API" in body["error"]

    serve(scenario)


def test_health_and_serving_certificate_names():
    async def scenario(h):
        async with aiohttp.ClientSession() as session:
            # by address (IP SAN) and by the Service's DNS names, as agents do
            for name in (None, "ambit-identity.ambit-system.svc", "ambit-identity.ambit-system.svc.cluster.local"):
                async with session.get(h.url + "/healthz", ssl=h.ssl, server_hostname=name) as r:
                    assert r.status == 200 and await r.text() == "ok\n"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(h.url + "/healthz", ssl=h.ssl, server_hostname="evil.example"):
                    pass

    serve(scenario)


# ---- the agent's side: HttpsCaClient and the certificate manager ---------------------------------------
def test_manager_gets_certificates_over_https_with_a_rotating_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("agent-token\n")

    async def scenario(h):
        client = HttpsCaClient(url=h.url, token_path=token_file, root_pem=h.ca.roots_pem, timeout=5)
        manager = CertificateManager(ca=client, settings=AgentSettings(), trust_domain=TD,
                                     trust_bundle_pem=h.ca.roots_pem)
        try:
            manager.ensure(WEB, "uid-w1")
            cert = await manager.wait_ready(WEB, timeout=10)
            assert cert.not_after - cert.not_before == timedelta(hours=24, minutes=1)
            token_file.write_text("agent-token-rotated\n")  # the kubelet rotated the projected token
            signed = await client.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
            assert signed.chain_pem and signed.root_pem == h.ca.roots_pem
            assert h.cluster.tokens_seen == ["agent-token", "agent-token-rotated"]
            manager.ensure(DB, "uid-d1")  # db runs on node-2: the CA refuses, the manager keeps trying
            await asyncio.sleep(0.3)
            assert "no Running or Pending pod with service account 'db'" in manager.snapshot()[0]["last_error"]
        finally:
            await manager.close()
            await client.close()

    serve(scenario)


def test_client_reaches_the_ca_by_service_name_without_dns(tmp_path):
    """The agent's URL names the Service; its own view of Services answers, TLS checks the name."""
    token_file = tmp_path / "token"
    token_file.write_text("agent-token")

    async def scenario(h):
        port = int(h.url.rsplit(":", 1)[1])
        asked: list[str] = []

        def resolve(host: str) -> str | None:
            asked.append(host)
            return "127.0.0.1" if host == "ambit-identity.ambit-system.svc" else None

        client = HttpsCaClient(url=f"https://ambit-identity.ambit-system.svc:{port}", token_path=token_file,
                               root_pem=h.ca.roots_pem, timeout=5, resolve=resolve)
        wrong = HttpsCaClient(url=f"https://localhost:{port}", token_path=token_file,
                              root_pem=h.ca.roots_pem, timeout=5, resolve=resolve)
        try:
            signed = await client.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
            assert signed.chain_pem and asked == ["ambit-identity.ambit-system.svc"]
            with pytest.raises(CaUnavailableError, match="does not verify"):  # localhost is not in its certificate
                await wrong.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
        finally:
            await client.close()
            await wrong.close()

    serve(scenario)


def test_client_maps_refusals_and_outages(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("web-token")

    async def scenario(h):
        client = HttpsCaClient(url=h.url, token_path=token_file, root_pem=h.ca.roots_pem, timeout=5)
        other = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=1), clock=SystemClock())
        distrusting = HttpsCaClient(url=h.url, token_path=token_file, root_pem=other.roots_pem, timeout=5)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        nowhere = HttpsCaClient(url=f"https://127.0.0.1:{closed_port}", token_path=token_file,
                                root_pem=h.ca.roots_pem, timeout=5)
        tokenless = HttpsCaClient(url=h.url, token_path=tmp_path / "missing", root_pem=h.ca.roots_pem, timeout=5)
        try:
            with pytest.raises(CaRefusedError) as refused:
                await client.request_certificate(csr_pem(DB).encode(), ttl=timedelta(hours=1))
            assert refused.value.status == 403 and "may obtain only its own identity" in refused.value.reason
            with pytest.raises(CaUnavailableError, match="does not verify against the trust bundle"):
                await distrusting.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
            with pytest.raises(CaUnavailableError, match="cannot reach the CA"):
                await nowhere.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
            with pytest.raises(Exception, match="is the projected token volume mounted"):
                await tokenless.request_certificate(csr_pem(WEB).encode(), ttl=timedelta(hours=1))
        finally:
            for c in (client, distrusting, nowhere, tokenless):
                await c.close()

    serve(scenario)


# ---- run(): bootstrap, serve, stop ----------------------------------------------------------------------
class MemoryStore:
    def __init__(self):
        self.secrets, self.config_maps = {}, {}

    async def read_secret(self, *, namespace, name):
        return self.secrets.get((namespace, name))

    async def create_secret(self, *, namespace, name, data):
        if (namespace, name) in self.secrets:
            return False
        self.secrets[(namespace, name)] = data
        return True

    async def read_config_map(self, *, namespace, name):
        return self.config_maps.get((namespace, name))

    async def write_config_map(self, *, namespace, name, data):
        self.config_maps[(namespace, name)] = data


def test_run_bootstraps_the_ca_serves_and_stops():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = IdentitySettings(server=ServerSettings(listen_host="127.0.0.1", port=port, extra_ips=("127.0.0.1",)))

    async def main():
        store, stop = MemoryStore(), asyncio.Event()
        task = asyncio.create_task(run(settings, cluster=FakeCluster(), store=store, stop=stop), name="ca")
        for _ in range(100):
            if ("ambit-system", "ambit-trust-bundle") in store.config_maps:
                break
            await asyncio.sleep(0.02)
        root = store.config_maps[("ambit-system", "ambit-trust-bundle")]["root-cert.pem"]
        assert store.secrets[("ambit-system", "ambit-ca")]["root-cert.pem"].decode() == root
        context = ssl.create_default_context(cadata=root)
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.post(f"https://127.0.0.1:{port}/v1/certificates", ssl=context,
                                            headers={"Authorization": "Bearer agent-token"},
                                            json={"csr": csr_pem(WEB)}) as r:
                        assert r.status == 201
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("the CA never started listening")
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
