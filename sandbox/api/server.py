"""Process entry point: PKI, store, bootstrap objects, HTTPS listeners, graceful shutdown."""
from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from sandbox.config import SandboxConfig

from .handlers import Handlers
from .pki import Pki, ensure_pki, write_kubeconfig
from .resources import Resources
from .store import Store
from .tokens import TokenIssuer

log = logging.getLogger("sandbox.api")
SHUTDOWN_GRACE = 5.0


class ServerError(Exception):
    """The API server cannot start (e.g. its port is taken)."""


def issuer_url(cfg: SandboxConfig) -> str:
    """The service-account token issuer, also the API's own token audience (like Kubernetes)."""
    return f"https://kubernetes.default.svc.{cfg.trust_domain}"


def ssl_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def build(cfg: SandboxConfig, *, bookmark_interval: float = 10.0) -> tuple[Handlers, Pki]:
    """Everything but the sockets: PKI, store (with bootstrap objects) and the request handlers."""
    pki = ensure_pki(cfg)
    store = Store(cfg.db_path)
    issuer = TokenIssuer(key_pem=pki.sa_key.read_bytes(), issuer=issuer_url(cfg), api_audiences=[issuer_url(cfg)])
    resources = Resources(store, cfg=cfg, issuer=issuer, admin_token=pki.admin_token)
    resources.bootstrap()
    return Handlers(resources, bookmark_interval=bookmark_interval), pki


async def serve(cfg: SandboxConfig, *, bind: list[str], stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    handlers, pki = build(cfg)
    write_kubeconfig(cfg)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    runner = web.AppRunner(handlers.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        ctx = ssl_context(pki)
        for addr in bind:
            site = web.TCPSite(runner, addr, cfg.api_port, ssl_context=ctx, reuse_address=True, backlog=256)
            try:
                await site.start()
            except OSError as exc:
                raise ServerError(
                    f"cannot listen on {addr}:{cfg.api_port}: {exc.strerror}; is another sandbox API "
                    f"(AMBIT_SANDBOX={cfg.name}, index {cfg.index}) already running, or is {addr} not on this host?"
                ) from exc
            log.info("sandbox API listening on https://%s:%d", addr, cfg.api_port)
        log.info("kubeconfig: %s", cfg.kubeconfig_path)
        await stop.wait()
        log.info("shutting down: closing %d watches", handlers.open_watches)
    finally:
        handlers.store.close_watchers()
        await runner.cleanup()
        handlers.store.close()


def main(cfg: SandboxConfig, *, bind: list[str]) -> None:
    """Run the sandbox API on ``bind`` addresses (port ``cfg.api_port``) until SIGTERM/SIGINT."""
    asyncio.run(serve(cfg, bind=bind))
