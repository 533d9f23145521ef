"""The identity CA service (``ambit identity serve``): signs workload CSRs for authorized node agents.

- ``POST /v1/certificates`` with ``{"csr": "<PEM>", "ttl_seconds": 86400}`` and
  ``Authorization: Bearer <projected service-account token>`` answers
  201 ``{"certificate_chain": [leaf PEM, intermediates...], "root_cert": PEM, "expires_at": RFC 3339}``;
  401/403 ``{"error": reason}`` when ``authz.NodeAuthorizer`` refuses, 400 for a bad body or CSR,
  503 when the Kubernetes API cannot answer or the CA cannot sign.
- ``GET /healthz`` answers 200 while the CA serves.
- TLS with a serving certificate issued by the CA itself for the Service's DNS names (and any
  configured IPs), re-issued at half-life; agents verify it against the trust bundle.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from node_agent.identity.authz import ClusterApi, NodeAuthorizer
from node_agent.identity.bootstrap import CaSecretStore, load_or_create_ca, publish_trust_bundle
from node_agent.identity.ca import (
    CERTIFICATES_PATH,
    CertificateAuthority,
    certificate_pem,
    private_key_pem,
    read_csr,
)
from node_agent.identity.clock import Clock, SystemClock
from node_agent.identity.errors import (
    CaError,
    ClusterApiError,
    CsrError,
    IdentityError,
    RefusedError,
    UnauthenticatedError,
)
from node_agent.identity.settings import IdentitySettings
from node_agent.identity.tls import load_cert_chain_in_memory

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"


def rfc3339(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class _BadRequest(Exception):
    pass


class IdentityServer:
    """The CA's HTTPS listener; ``start`` binds and returns the port, ``close`` stops it."""

    def __init__(
        self, *, settings: IdentitySettings, ca: CertificateAuthority, authorizer: NodeAuthorizer, clock: Clock
    ) -> None:
        self._settings = settings
        self._ca = ca
        self._authorizer = authorizer
        self._clock = clock
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._serving_not_after: datetime | None = None
        self._runner: web.AppRunner | None = None
        self._rotator: asyncio.Task[None] | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        self._rotate_serving_certificate()
        app = web.Application(client_max_size=self._settings.server.max_request_bytes)
        app.router.add_post(CERTIFICATES_PATH, self._handle_certificates)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.server.listen_host, self._settings.server.port,
                           ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise IdentityError(
                f"cannot listen on {self._settings.server.listen_host}:{self._settings.server.port}: {exc}; "
                "is another CA running there?"
            ) from exc
        addresses = self._runner.addresses
        assert addresses, "BUG: aiohttp site started without a listening socket"
        self.port = addresses[0][1]
        self._rotator = asyncio.create_task(self._rotate_forever(), name="identity-serving-cert-rotation")
        self._rotator.add_done_callback(_log_unexpected_exit)
        log.info("identity CA listening on https://%s:%d (trust domain %s)",
                 self._settings.server.listen_host, self.port, self._settings.trust_domain)
        return self.port

    async def close(self) -> None:
        if self._rotator is not None:
            self._rotator.cancel()
            try:
                await self._rotator
            except asyncio.CancelledError:
                pass
            self._rotator = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- serving certificate -----------------------------------------------------------------------
    def _rotate_serving_certificate(self) -> None:
        issued, key = self._ca.issue_serving_certificate(
            dns_names=self._settings.serving_dns_names,
            ips=self._settings.server.extra_ips,
            ttl=self._settings.server.serving_cert_ttl,
        )
        load_cert_chain_in_memory(self._ssl, chain_pem=issued.chain_pem, key_pem=private_key_pem(key))
        self._serving_not_after = issued.not_after
        log.info("serving certificate for %s valid until %s",
                 ", ".join((*self._settings.serving_dns_names, *self._settings.server.extra_ips)),
                 issued.not_after.isoformat())

    async def _rotate_forever(self) -> None:
        backoff = 1.0
        while True:
            assert self._serving_not_after is not None, "BUG: rotation before the first serving certificate"
            half = (self._serving_not_after - self._clock.now()) / 2
            await self._clock.sleep(max(half, timedelta(seconds=backoff)).total_seconds())
            try:
                self._rotate_serving_certificate()
                backoff = 1.0
            except IdentityError as exc:
                log.error("cannot renew the CA's serving certificate: %s; retrying", exc)
                backoff = min(backoff * 2, 300.0)

    # -- handlers ----------------------------------------------------------------------------------
    async def _handle_health(self, request: web.Request) -> web.Response:
        if self._serving_not_after is None or self._clock.now() >= self._serving_not_after:
            return web.Response(status=503, text="serving certificate expired\n")
        return web.Response(text="ok\n")

    async def _handle_certificates(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        identity = caller = None
        try:
            token = _bearer_token(request.headers.get("Authorization", ""))
            csr_pem, ttl = await self._read_body(request)
            caller = await self._authorizer.authenticate(token)
            identity = read_csr(csr_pem, trust_domain=self._settings.trust_domain).identity
            node = await self._authorizer.authorize(caller, identity)
            issued = self._ca.sign(csr_pem, identity=identity, ttl=ttl)
        except RefusedError as exc:
            log.warning("refused %s to %s from %s: %s", identity or "a certificate", caller or "a caller", peer,
                        exc.reason)
            return _error(exc.status, exc.reason)
        except (_BadRequest, CsrError) as exc:
            log.warning("rejected a request from %s (%s): %s", peer, caller or "unauthenticated", exc)
            return _error(400, str(exc))
        except ClusterApiError as exc:
            log.error("cannot decide on %s for %s: %s", identity or "a certificate", caller or peer, exc)
            return _error(503, f"the CA cannot reach the Kubernetes API; retry later ({exc})")
        except CaError as exc:
            log.error("cannot sign %s: %s", identity, exc)
            return _error(503, str(exc))
        log.info("issued %s (serial %x, until %s) to %s on node %s", identity, issued.leaf.serial_number,
                 rfc3339(issued.not_after), caller, node)
        return web.json_response(
            {
                "certificate_chain": [certificate_pem(c) for c in issued.chain],
                "root_cert": issued.roots_pem,
                "expires_at": rfc3339(issued.not_after),
            },
            status=201,
        )

    async def _read_body(self, request: web.Request) -> tuple[str, timedelta]:
        example = '{"csr": "-----BEGIN CERTIFICATE REQUEST-----...", "ttl_seconds": 86400}'
        try:
            body: Any = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _BadRequest(f"the body is not JSON; send {example}") from None
        if not isinstance(body, dict) or not isinstance(body.get("csr"), str):
            raise _BadRequest(f"the body needs a 'csr' string (PEM); send {example}")
        ca = self._settings.ca
        raw_ttl = body.get("ttl_seconds")
        if raw_ttl is None:
            return body["csr"], ca.workload_cert_ttl
        if isinstance(raw_ttl, bool) or not isinstance(raw_ttl, int) or raw_ttl <= 0:
            raise _BadRequest(f"ttl_seconds={raw_ttl!r} must be a positive integer")
        ttl = timedelta(seconds=raw_ttl)
        if ttl > ca.max_workload_cert_ttl:
            raise _BadRequest(
                f"ttl_seconds={raw_ttl} exceeds the CA's maximum of {int(ca.max_workload_cert_ttl.total_seconds())}"
            )
        return body["csr"], ttl


def _bearer_token(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("missing bearer token; send 'Authorization: Bearer <projected token>'")
    return token.strip()


def _log_unexpected_exit(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("BUG: task %s exited: %r", task.get_name(), exc, exc_info=exc)


async def run(
    settings: IdentitySettings,
    *,
    cluster: ClusterApi,
    store: CaSecretStore,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load or create the CA, publish the trust bundle, serve until ``stop`` is set (forever if None)."""
    clock = clock or SystemClock()
    ca = await load_or_create_ca(store, settings=settings, clock=clock)
    await publish_trust_bundle(store, ca, settings=settings)
    authorizer = NodeAuthorizer(cluster=cluster, audience=settings.server.audience,
                                node_agent_username=settings.node_agent_username)
    server = IdentityServer(settings=settings, ca=ca, authorizer=authorizer, clock=clock)
    await server.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.close()
        log.info("identity CA stopped")


def main(settings: IdentitySettings, *, api_client: Any = None) -> int:
    """``ambit identity serve``: run the CA until SIGTERM/SIGINT; the exit code for the CLI.

    ``api_client`` is a ``kubernetes.client.ApiClient``; without one, the in-cluster configuration
    is used, else the default kubeconfig.
    """
    from node_agent.identity.kube import KubeCaSecretStore, KubeClusterApi

    async def serve() -> None:
        client = api_client if api_client is not None else _default_api_client()
        cluster = KubeClusterApi(client, timeout=settings.server.api_timeout)
        store = KubeCaSecretStore(client, timeout=settings.server.api_timeout,
                                  owner_deployment=settings.ca.owner_deployment)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, cluster=cluster, store=store, stop=stop)

    try:
        asyncio.run(serve())
    except IdentityError as exc:
        log.error("identity CA: %s", exc)
        return 1
    return 0


def _default_api_client() -> Any:
    from node_agent.discovery.client import KubeConfigError, load_api_client

    try:
        return load_api_client()
    except KubeConfigError as exc:
        raise IdentityError(str(exc)) from exc
