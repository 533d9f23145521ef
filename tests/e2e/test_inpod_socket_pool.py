"""Upstream sockets for a pod come from a per-netns pool: made in the pod's netns, marked, closed on release."""
import asyncio
import socket
import subprocess
import uuid

import pytest

from node_agent.inpod.netns import NetnsWorker, PodNetns, listen_in_netns
from node_agent.inpod.sockets import POOL_SIZE, InpodSocketFactory
from node_agent.inpod.sockopt import PROXY_MARK, SO_MARK

pytestmark = pytest.mark.root


@pytest.fixture
def pod_netns():
    name = f"cnit-pool-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    ns = PodNetns.by_name(name)
    try:
        yield ns
    finally:
        ns.close()
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_connections_use_pooled_sockets_made_inside_the_pod(pod_netns):
    server = listen_in_netns(pod_netns, host="127.0.0.1", port=18099, mark=None)
    server.setblocking(True)
    worker = NetnsWorker()
    factory = InpodSocketFactory(worker)
    factory.add_local("uid-1", pod_netns)

    async def scenario():
        socks = []
        for _ in range(3 * POOL_SIZE):  # more than a pool holds: refills must keep up
            # 127.0.0.1:18099 listens only inside the pod: a socket made on the host would be refused
            sock = await factory.connect(netns=pod_netns, host="127.0.0.1", port=18099, bind_ip=None)
            assert sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == PROXY_MARK
            socks.append(sock)
            accepted, _ = server.accept()
            accepted.close()
        await asyncio.sleep(0.1)
        pool = factory._pools[(pod_netns, socket.AF_INET)]
        pooled = list(pool.socks)
        assert pooled, "the pool was refilled in the background"
        factory.remove_local("uid-1")
        assert all(s.fileno() == -1 for s in pooled), "releasing the pod closes its pooled sockets"
        for s in socks:
            s.close()

    try:
        asyncio.run(scenario())
    finally:
        server.close()
        worker.close()
