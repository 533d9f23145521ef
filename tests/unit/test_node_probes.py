"""Probe parsing, thresholds, and real httpGet/tcpSocket attempts on loopback."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from sandbox.node.errors import ContainerError
from sandbox.node.probes import Probe, ProbeTracker, parse_probe, resolve_port, run_probe

CONTAINER = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}


@pytest.mark.parametrize("port, number", [(80, 80), ("81", 81), ("http", 8080)], ids=["int", "numeric", "named"])
def test_ports_by_number_or_name(port, number):
    assert resolve_port(port, CONTAINER) == number


def test_unknown_named_port_is_a_config_error():
    with pytest.raises(ContainerError, match="probe port 'grpc' is not a number or a named port"):
        resolve_port("grpc", CONTAINER)


def test_parse_http_probe_with_defaults_and_timing():
    p = parse_probe({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2, "failureThreshold": 1},
                    CONTAINER, pod_ip="10.210.1.4")
    assert p == Probe(kind="http", host="10.210.1.4", port=8080, path="/ready", period=2.0, failure_threshold=1)


def test_a_probe_without_handler_is_rejected():
    with pytest.raises(ContainerError, match="grpc probes are not supported"):
        parse_probe({"grpc": {"port": 1}}, CONTAINER, pod_ip="x")


def test_readiness_thresholds():
    t = ProbeTracker(Probe(kind="tcp", initial_delay=5, period=1, success_threshold=2, failure_threshold=2),
                     started_at=100.0, initially_ok=False)
    assert not t.due(104.9) and t.due(105.0)
    assert t.record(True, 105.0) is False and not t.ok  # 1 of 2 successes
    assert not t.due(105.5) and t.due(106.0)
    assert t.record(True, 106.0) is True and t.ok
    assert t.record(False, 107.0, "refused") is False and t.ok  # 1 of 2 failures
    assert t.record(False, 108.0, "refused") is True and not t.ok and t.message == "refused"


def test_liveness_starts_alive():
    t = ProbeTracker(Probe(kind="tcp", failure_threshold=1), started_at=0.0, initially_ok=True)
    assert t.ok and t.due(0.0)
    assert t.record(False, 0.0, "x") and not t.ok


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 200 if self.path == "/ok" else 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(self.headers.get("User-Agent", "").encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_probe_against_a_real_server(http_server):
    ok, msg = run_probe(Probe(kind="http", host="127.0.0.1", port=http_server, path="/ok"))
    assert ok and msg == ""
    ok, msg = run_probe(Probe(kind="http", host="127.0.0.1", port=http_server, path="/not-ready"))
    assert not ok and msg == "HTTP probe failed with statuscode: 503"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_and_http_probes_to_a_closed_port_fail_with_refused():
    port = _free_port()
    ok, msg = run_probe(Probe(kind="tcp", host="127.0.0.1", port=port))
    assert not ok and msg == f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    ok, msg = run_probe(Probe(kind="http", host="127.0.0.1", port=port, path="/x"))
    assert not ok and "connection refused" in msg


def test_tcp_probe_to_a_listener_succeeds():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert run_probe(Probe(kind="tcp", host="127.0.0.1", port=s.getsockname()[1])) == (True, "")


def test_exec_probe_uses_the_given_function():
    seen = []
    ok, msg = run_probe(Probe(kind="exec", command=("cat", "/tmp/healthy"), timeout=2),
                        exec_fn=lambda cmd, timeout: (seen.append((cmd, timeout)) or (False, "no such file")))
    assert (ok, msg, seen) == (False, "no such file", [(["cat", "/tmp/healthy"], 2.0)])
