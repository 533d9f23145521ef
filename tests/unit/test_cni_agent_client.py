"""The plugin's agent client against misbehaving peers: silent, refusing, garbling, absent."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from cni import protocol
from cni.agent_client import ask_agent
from cni.errors import AgentAbsent, AgentTimeout, AgentUnreachable, ProtocolError
from cni.protocol import CniRequest

REQUEST = CniRequest("ADD", "shop", "web-1", "", "c1", "/n", "eth0", ())


@pytest.fixture
def peer(tmp_path):
    """A unix listener whose behaviour per connection is ``behaviour(conn)``, run in a thread."""
    path = tmp_path / "cni.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    threads = []

    def serve(behaviour):
        def loop():
            conn, _ = server.accept()
            with conn:
                behaviour(conn)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return str(path)

    yield serve
    server.close()
    for thread in threads:
        thread.join(5)


def test_silent_agent_times_out_at_the_deadline(peer):
    done = threading.Event()
    path = peer(lambda conn: done.wait(5))
    started = time.monotonic()
    with pytest.raises(AgentTimeout, match="no answer on .* within 0.3s"):
        ask_agent(path, REQUEST, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    done.set()


def test_trickling_agent_still_times_out_at_the_deadline(peer):
    def trickle(conn):
        for byte in protocol.encode_response(protocol.CniResponse("enrolled", "x" * 50)):
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(0.05)

    path = peer(trickle)
    started = time.monotonic()
    with pytest.raises(AgentTimeout):
        ask_agent(path, REQUEST, timeout=0.5)
    assert time.monotonic() - started < 2


def test_agent_hanging_up_is_unreachable(peer):
    path = peer(lambda conn: conn.recv(65536))
    with pytest.raises(AgentUnreachable, match="closed .* without answering"):
        ask_agent(path, REQUEST, timeout=5)


def test_garbled_answer_is_a_protocol_error(peer):
    path = peer(lambda conn: (conn.recv(65536), conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")))
    with pytest.raises(ProtocolError):
        ask_agent(path, REQUEST, timeout=5)


def test_stale_socket_is_unreachable(tmp_path):
    path = tmp_path / "cni.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with pytest.raises(AgentUnreachable, match="nothing listens on"):
        ask_agent(str(path), REQUEST, timeout=1)


def test_missing_directory_is_absent(tmp_path):
    with pytest.raises(AgentAbsent):
        ask_agent(str(tmp_path / "no" / "such" / "cni.sock"), REQUEST, timeout=1)
