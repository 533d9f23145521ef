"""How Ambit's in-cluster processes run (the node agent, the waypoint, its controller): one event
loop (uvloop), the cluster's API client, SIGTERM/SIGINT as the stop event; an error the process
names (or a kubeconfig that cannot be loaded) is logged as one line and exits 1."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from kubernetes import client as k8s

from node_agent.discovery.client import KubeConfigError, load_api_client

log = logging.getLogger(__name__)

Body = Callable[[k8s.ApiClient, asyncio.Event], Awaitable[None]]


def run(body: Body, *, errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``body(api_client, stop)`` until it returns; ``stop`` is set on SIGTERM or SIGINT."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        uvloop = None

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await body(load_api_client(), stop)

    try:
        if uvloop is not None:
            uvloop.run(_main())
        else:
            asyncio.run(_main())
    except (KubeConfigError, *errors) as exc:
        log.error("%s", exc)
        return 1
    return 0
