"""Sockets made inside a pod's netns from a helper thread, used from the event loop (root).

The "host" side here is the test process's own netns, used only on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid

import pytest

from node_agent.inpod.errors import NetnsError
from node_agent.inpod.netns import NetnsWorker, PodNetns, connect_socket_in_netns, listen_in_netns
from node_agent.inpod.sockopt import PROXY_MARK, SO_MARK
from sandbox.node import netns as netns_tool

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


@pytest.fixture
def pod():
    if os.geteuid() != 0:
        pytest.fail("these tests need root (setns, network namespaces); run them as root")
    name = f"cnit-w-{uuid.uuid4().hex[:6]}"
    netns_tool.add(name)  # loopback up
    handle = None
    try:
        handle = PodNetns.by_name(name)
        yield handle
    finally:
        if handle is not None:
            handle.close()
        netns_tool.delete(name)


@pytest.fixture
def worker():
    w = NetnsWorker(name="test-netns")
    yield w
    w.close()


def free_port_in_both(pod: PodNetns) -> tuple[int, socket.socket, socket.socket]:
    """A port listening on 127.0.0.1 both in the pod and here, with the two listeners."""
    for _ in range(20):
        host = socket.socket()
        host.bind(("127.0.0.1", 0))
        port = host.getsockname()[1]
        try:
            inside = listen_in_netns(pod, host="127.0.0.1", port=port, mark=None)
        except NetnsError:
            host.close()
            continue
        host.listen(8)
        host.setblocking(False)
        return port, inside, host
    raise AssertionError("no port free in both namespaces")


def test_socket_made_in_the_pod_and_connected_from_the_loop_reaches_the_pod_not_the_host(pod, worker):
    port, inside, host = free_port_in_both(pod)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        main_thread = threading.get_ident()
        sock = await worker.connect_socket(pod, mark=PROXY_MARK)
        assert sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == PROXY_MARK
        await loop.sock_connect(sock, ("127.0.0.1", port))  # on the loop's thread
        assert threading.get_ident() == main_thread
        conn, _ = await asyncio.wait_for(loop.sock_accept(inside), 5)
        await loop.sock_sendall(sock, b"where am i")
        assert await loop.sock_recv(conn, 32) == b"where am i"
        with pytest.raises(BlockingIOError):
            host.accept()  # the host's listener on the same address got nothing
        conn.close()
        sock.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        inside.close()
        host.close()
    # the loop's thread never left its namespace
    assert os.stat("/proc/thread-self/ns/net").st_ino != pod.inode


def test_listener_in_the_pod(pod, worker):
    async def main() -> None:
        listener = await worker.listen(pod, host="127.0.0.1", port=15001)
        with listener:
            assert listener.getblocking() is False
            assert listener.getsockopt(socket.SOL_SOCKET, SO_MARK) == PROXY_MARK
            assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            client = connect_socket_in_netns(pod, mark=None, worker=worker)
            with client:
                await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", 15001))
                conn, peer = await asyncio.get_running_loop().sock_accept(listener)
                conn.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_transparent_listener(pod):
    with listen_in_netns(pod, host="0.0.0.0", port=15006, transparent=True) as sock:
        assert sock.getsockopt(socket.SOL_IP, 19) == 1  # IP_TRANSPARENT


def test_address_in_use_names_the_namespace(pod, worker):
    with listen_in_netns(pod, host="127.0.0.1", port=15008, reuse=False, worker=worker):
        with pytest.raises(NetnsError, match=f"cannot listen on 127.0.0.1:15008 in {pod.path}: Address already in use"):
            listen_in_netns(pod, host="127.0.0.1", port=15008, reuse=False, worker=worker)


def test_bind_to_an_address_the_pod_lacks(pod):
    with pytest.raises(NetnsError, match="bound to 10.99.9.9 in .*Cannot assign requested address"):
        connect_socket_in_netns(pod, bind_ip="10.99.9.9")


def test_worker_returns_home_after_every_job_even_a_failing_one(pod, worker):
    home = os.stat("/proc/self/ns/net").st_ino

    def where() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    def boom() -> None:
        raise ValueError("job failed")

    assert worker.call(pod, where) == pod.inode
    with pytest.raises(ValueError, match="job failed"):
        worker.call(pod, boom)
    with PodNetns.open("/proc/self/ns/net") as own:
        assert worker.call(own, where) == home  # back home between jobs


def test_closed_handle_is_an_error_not_a_wrong_namespace(pod, worker):
    other = PodNetns.open(pod.path)
    other.close()
    with pytest.raises(NetnsError, match="cannot enter network namespace"):
        worker.call(other, lambda: None)
    assert worker.call(pod, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == pod.inode


def test_cancelled_caller_does_not_leak_the_socket(pod, worker):
    made: list[socket.socket] = []

    def slow_socket() -> socket.socket:
        time.sleep(0.3)
        sock = socket.socket()
        made.append(sock)
        return sock

    async def main() -> None:
        task = asyncio.ensure_future(worker.run(pod, slow_socket))
        await asyncio.sleep(0.05)  # the job is running now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # and a job cancelled before it starts never runs
        blocker = asyncio.ensure_future(worker.run(pod, time.sleep, 0.3))
        queued = asyncio.ensure_future(worker.run(pod, slow_socket))
        await asyncio.sleep(0.05)
        queued.cancel()
        await blocker

    asyncio.run(main())
    worker.call(pod, lambda: None)  # the queue has drained
    assert len(made) == 1
    assert made[0].fileno() == -1  # closed by the worker's cleanup


@pytest.mark.parametrize(
    ("path", "message"),
    [("/run/netns/cnit-missing", "does not exist"), ("/proc/self/status", "is not a network namespace"), ("/proc/self/ns/uts", "is not a network namespace")],
    ids=["missing", "regular-file", "other-namespace-type"],
)
def test_open_refuses_what_is_not_a_netns(path, message):
    with pytest.raises(NetnsError, match=message):
        PodNetns.open(path)


def test_handle_identity_by_inode(pod):
    with PodNetns.open(pod.path) as again:
        assert again.inode == pod.inode
    with PodNetns.of_pid(os.getpid()) as own:
        assert own.inode != pod.inode
