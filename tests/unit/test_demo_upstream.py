"""Upstream: explicit addresses, and Service ClusterIPs from a loopback HTTPS stand-in for the API."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandbox.demo.upstream import Unresolved, Upstream

TOKEN = "sa-token-123"


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-api")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_path = tmp_path / "api.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path = tmp_path / "api.crt"
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path


class FakeApi:
    def __init__(self, tmp_path):
        self.services = {}
        self.requests = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                api.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"kind": "Status", "code": 401})
                svc = api.services.get(self.path)
                if svc is None:
                    return self._send(404, {"kind": "Status", "code": 404})
                return self._send(200, svc)

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        cert, key = self_signed(tmp_path)
        self.ca = cert
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.thread.join(5)
        self.server.server_close()


@pytest.fixture
def api(tmp_path):
    fake = FakeApi(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def sa_dir(tmp_path, api):
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(TOKEN)
    (d / "ca.crt").write_bytes(api.ca.read_bytes())
    (d / "namespace").write_text("demo\n")
    return d


def in_cluster(api):
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}


def service(ip="10.220.0.17", ports=({"name": "http", "port": 8080},)):
    return {"kind": "Service", "spec": {"clusterIP": ip, "ports": list(ports)}}


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_explicit_address_wins(sa_dir, api):
    up = Upstream("emoji", environ={"EMOJI_ADDR": "127.0.0.1:9001", **in_cluster(api)}, sa_dir=sa_dir)
    assert up.address() == ("127.0.0.1", 9001)
    assert api.requests == []


def test_malformed_explicit_address_names_the_variable(sa_dir):
    with pytest.raises(ValueError, match=r"EMOJI_ADDR='emoji' must be host:port"):
        Upstream("emoji", environ={"EMOJI_ADDR": "emoji"}, sa_dir=sa_dir)


@pytest.mark.parametrize(
    "ports,expected",
    [
        pytest.param([{"name": "admin", "port": 9000}, {"name": "http", "port": 8080}], 8080, id="port-named-http"),
        pytest.param([{"name": "grpc", "port": 9090}], 9090, id="first-port"),
    ],
)
def test_cluster_ip_from_the_api(api, sa_dir, ports, expected):
    api.services["/api/v1/namespaces/demo/services/emoji"] = service(ports=ports)
    up = Upstream("emoji", environ=in_cluster(api), sa_dir=sa_dir)
    assert up.address() == ("10.220.0.17", expected)
    assert api.requests == [("/api/v1/namespaces/demo/services/emoji", f"Bearer {TOKEN}")]


def test_pod_namespace_overrides_the_service_account_namespace(api, sa_dir):
    api.services["/api/v1/namespaces/shop/services/web"] = service()
    up = Upstream("web", environ={**in_cluster(api), "POD_NAMESPACE": "shop"}, sa_dir=sa_dir)
    assert up.address() == ("10.220.0.17", 8080)


def test_answer_is_cached_then_refreshed(api, sa_dir):
    clock = Clock()
    api.services["/api/v1/namespaces/demo/services/emoji"] = service("10.220.0.17")
    up = Upstream("emoji", environ=in_cluster(api), sa_dir=sa_dir, refresh=30, clock=clock)
    assert up.address() == ("10.220.0.17", 8080)
    api.services["/api/v1/namespaces/demo/services/emoji"] = service("10.220.0.99")
    clock.t += 10
    assert up.address() == ("10.220.0.17", 8080) and len(api.requests) == 1
    clock.t += 25
    assert up.address() == ("10.220.0.99", 8080) and len(api.requests) == 2


def test_missing_service_is_unresolved_and_retried_after_a_pause(api, sa_dir):
    clock = Clock()
    up = Upstream("emoji", environ=in_cluster(api), sa_dir=sa_dir, retry=2, clock=clock)
    with pytest.raises(Unresolved, match="HTTP 404; does the Service exist"):
        up.address()
    with pytest.raises(Unresolved):
        up.address()
    assert len(api.requests) == 1, "no second lookup inside the retry pause"
    api.services["/api/v1/namespaces/demo/services/emoji"] = service()
    clock.t += 3
    assert up.address() == ("10.220.0.17", 8080)


def test_last_answer_keeps_serving_when_the_api_fails(api, sa_dir):
    clock = Clock()
    api.services["/api/v1/namespaces/demo/services/emoji"] = service()
    up = Upstream("emoji", environ=in_cluster(api), sa_dir=sa_dir, refresh=30, clock=clock)
    assert up.address() == ("10.220.0.17", 8080)
    api.services.clear()
    clock.t += 31
    assert up.address() == ("10.220.0.17", 8080)


def test_headless_service_is_unresolved(api, sa_dir):
    api.services["/api/v1/namespaces/demo/services/emoji"] = service(ip="None")
    with pytest.raises(Unresolved, match="no ClusterIP"):
        Upstream("emoji", environ=in_cluster(api), sa_dir=sa_dir).address()


def test_outside_a_cluster_the_error_says_what_to_set(tmp_path):
    with pytest.raises(Unresolved, match=r"set VOTING_ADDR=host:port"):
        Upstream("voting", environ={}, sa_dir=tmp_path).address()


def test_missing_credentials(api, tmp_path):
    with pytest.raises(Unresolved, match="service-account credentials"):
        Upstream("emoji", environ=in_cluster(api), sa_dir=tmp_path / "none").address()
