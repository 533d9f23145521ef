"""The sandbox API's pods/proxy with the real kubectl: `kubectl get --raw .../pods/NAME:PORT/proxy/PATH`
reaches an HTTP server at the pod's IP; a pod without an IP or that does not answer is a 503, an
unknown pod a 404, anything but GET/HEAD a 405."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandbox.api.errors import BadRequest
from sandbox.api.proxy import parse_target

SANDBOX = ("apit", 7)  # the api and kubectl fixtures: tests/integration/conftest.py


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("web", ("web", None)), ("web:8080", ("web", 8080)), ("http:web:8080", ("web", 8080))],
    ids=["name", "name-port", "scheme-name-port"],
)
def test_parse_target(ref, expected):
    assert parse_target(ref) == expected


@pytest.mark.parametrize("ref", ["https:web:443", "web:http", "web:0", "a:b:c:d"],
                         ids=["https", "named-port", "port-0", "too-many"])
def test_parse_target_refuses(ref):
    with pytest.raises(BadRequest):
        parse_target(ref)


@pytest.fixture
def http_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _pod(kubectl, name: str, ip: str | None) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": "none"}]}}
    kubectl("create", "-f", "-", stdin=json.dumps(pod))
    if ip:
        kubectl("patch", "pod", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": {"podIP": ip}}))


def test_proxy_reaches_the_pod(kubectl, http_server):
    _pod(kubectl, "proxied", "127.0.0.1")
    _pod(kubectl, "no-ip", None)
    out = kubectl("get", "--raw", f"/api/v1/namespaces/default/pods/proxied:{http_server}/proxy/debug/pods?x=1")
    assert json.loads(out.stdout) == {"path": "/debug/pods?x=1"}
    gone = kubectl("get", "--raw", "/api/v1/namespaces/default/pods/nope:80/proxy/x", check=False)
    assert gone.returncode == 1 and 'pods "nope" not found' in gone.stderr, gone.stderr
    no_ip = kubectl("get", "--raw", "/api/v1/namespaces/default/pods/no-ip:80/proxy/x", check=False)
    assert no_ip.returncode == 1 and "has no IP yet" in no_ip.stderr
    closed = kubectl("get", "--raw", "/api/v1/namespaces/default/pods/proxied:1/proxy/x", check=False)
    assert closed.returncode == 1 and "error trying to reach service" in closed.stderr
