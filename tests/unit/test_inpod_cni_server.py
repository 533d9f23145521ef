"""The agent's CNI socket server, with the plugin's own client, on a unix socket in a tmp dir."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat

import pytest

from cni import protocol
from cni.agent_client import ask_agent
from cni.errors import AgentAbsent, AgentUnreachable
from cni.protocol import CniRequest, CniResponse
from node_agent.inpod.cni_server import CniServer
from node_agent.inpod.errors import CniServerError

REQUEST = CniRequest("ADD", "shop", "web-1", "u-1", "c0ffee", "/var/run/netns/p", "eth0", ("10.210.0.7",))


def ask(path, request=REQUEST, timeout=5.0):
    return asyncio.to_thread(ask_agent, str(path), request, timeout=timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_answers_with_the_handlers_response(tmp_path):
    seen = []

    async def handler(request):
        seen.append(request)
        return CniResponse("enrolled", "listeners up")

    async def main():
        async with CniServer(path=tmp_path / "run" / "cni.sock", handler=handler) as server:
            assert await ask(server.path) == CniResponse("enrolled", "listeners up")
            assert await ask(server.path, REQUEST._replace(command="DEL", netns="")) == CniResponse("enrolled", "listeners up")

    run(main())
    assert seen == [REQUEST, REQUEST._replace(command="DEL", netns="")]


def test_socket_is_private_and_removed_on_close(tmp_path):
    path = tmp_path / "a" / "b" / "cni.sock"

    async def main():
        async with CniServer(path=path, handler=_enrolled):
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert sorted(os.listdir(path.parent)) == ["cni.sock"]  # no temporary name left
        assert not path.exists()

    run(main())


def test_handlers_slow_answer_becomes_an_error_and_the_handler_is_cancelled(tmp_path):
    cancelled = asyncio.Event()

    async def handler(request):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return CniResponse("enrolled", "")

    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=handler, request_timeout=0.2) as server:
            response = await ask(server.path)
            assert cancelled.is_set()
            return response

    response = run(main())
    assert response.status == "error"
    assert response.message == "the agent did not finish ADD for pod shop/web-1 within 0.2s"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (RuntimeError("iptables-restore failed"), "ADD for pod shop/web-1 failed in the agent: iptables-restore failed"),
        (TimeoutError("nsenter hung"), "ADD for pod shop/web-1 failed in the agent: nsenter hung"),
    ],
    ids=["error", "handlers-own-timeout"],
)
def test_handler_exception_becomes_an_error(tmp_path, caplog, exc, message):
    async def handler(request):
        raise exc

    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=handler) as server:
            return await ask(server.path)

    with caplog.at_level(logging.WARNING, logger="node_agent.inpod.cni_server"):
        assert run(main()) == CniResponse("error", message)
    assert "CNI ADD for pod shop/web-1 failed" in caplog.text


def test_handler_returning_the_wrong_type_is_a_bug_answer(tmp_path):
    async def handler(request):
        return {"status": "enrolled"}

    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=handler) as server:
            return await ask(server.path)

    assert run(main()) == CniResponse("error", "BUG: the agent's CNI handler returned dict")


async def raw_exchange(path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    out = await reader.read()
    writer.close()
    return out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (protocol.frame(b'{"v": 2, "command": "ADD"}'), "message has protocol version 2; this side speaks 1"),
        (protocol.frame(b'{"v": 1, "command": "ADD"}'), "malformed request: message has no pod"),
        (protocol.frame(b"not json"), "malformed request: message body is not UTF-8 JSON"),
        (b"\x00\x00\x00\x00", "malformed request: frame announces 0 bytes"),
    ],
    ids=["other-version", "missing-field", "not-json", "zero-length"],
)
def test_malformed_requests_get_an_error_answer(tmp_path, data, message):
    called = []

    async def handler(request):
        called.append(request)
        return CniResponse("enrolled", "")

    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=handler) as server:
            return await raw_exchange(server.path, data)

    out = run(main())
    response = protocol.decode_response(out[4:])
    assert response.status == "error"
    assert response.message.startswith(message)
    assert called == []


def test_silent_client_is_dropped_after_the_read_timeout(tmp_path):
    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=_enrolled, read_timeout=0.2) as server:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(b"\x00\x00")  # half a header, then nothing
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main())


def test_close_cancels_requests_in_flight(tmp_path):
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return CniResponse("enrolled", "")

    async def main():
        server = CniServer(path=tmp_path / "cni.sock", handler=handler)
        await server.start()
        pending = asyncio.ensure_future(ask(server.path))
        await started.wait()
        await server.close()
        assert cancelled.is_set()
        with pytest.raises(AgentUnreachable, match="closed .* without answering"):
            await pending

    run(main())


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "cni.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed agent's socket

    async def main():
        async with CniServer(path=path, handler=_enrolled) as server:
            assert (await ask(server.path)).status == "enrolled"

    run(main())


def test_live_socket_is_refused(tmp_path):
    async def main():
        async with CniServer(path=tmp_path / "cni.sock", handler=_enrolled):
            with pytest.raises(CniServerError, match="another process already serves .*second node agent"):
                await CniServer(path=tmp_path / "cni.sock", handler=_enrolled).start()

    run(main())


def test_non_socket_path_is_refused(tmp_path):
    (tmp_path / "cni.sock").write_text("not a socket")

    async def main():
        with pytest.raises(CniServerError, match="exists and is not a socket"):
            await CniServer(path=tmp_path / "cni.sock", handler=_enrolled).start()

    run(main())
    assert (tmp_path / "cni.sock").read_text() == "not a socket"


def test_close_leaves_a_successors_socket_alone(tmp_path):
    path = tmp_path / "cni.sock"

    async def main():
        old = CniServer(path=path, handler=_enrolled)
        await old.start()
        path.unlink()  # e.g. an operator removed it; a new agent then takes the path
        async with CniServer(path=path, handler=_enrolled):
            await old.close()
            assert path.exists()

    run(main())


def test_client_reports_a_missing_socket_as_absent(tmp_path):
    with pytest.raises(AgentAbsent, match="no agent socket at"):
        ask_agent(str(tmp_path / "nope.sock"), REQUEST, timeout=1)


async def _enrolled(request):
    return CniResponse("enrolled", "")
