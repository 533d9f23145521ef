"""The agent's side of the CA protocol: ``CaClient`` and its HTTPS implementation.

``HttpsCaClient`` posts a CSR to ``<ca_url>/v1/certificates`` with the agent's projected
service-account token (re-read from its file on every request: the kubelet rotates it), and verifies
the CA's serving certificate against the initial trust anchor (the mounted ``ambit-trust-bundle``).
Refusals (4xx) become ``CaRefusedError`` with the CA's reason; everything else (connection, TLS,
timeouts, 5xx) becomes ``CaUnavailableError``. Both are retried by the certificate manager.

``resolve(host)`` (optional) answers a host name before DNS is asked: the agent passes its view of
the cluster's Services, so ``ambit-identity.<ns>.svc`` reaches the CA's ClusterIP even where
cluster DNS is down or absent (a hostNetwork agent should not depend on it). TLS still verifies
the certificate against the name in the URL.
"""
from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Protocol

import aiohttp
import aiohttp.abc

from node_agent.identity.errors import CaClientError, CaRefusedError, CaUnavailableError
from node_agent.identity.ca import CERTIFICATES_PATH


@dataclass(frozen=True)
class SignedCertificate:
    """The CA's answer: the chain to present (leaf first, no root), the root, and the leaf's expiry."""

    chain_pem: tuple[str, ...]
    root_pem: str
    expires_at: datetime


class CaClient(Protocol):
    """How the certificate manager gets certificates signed."""

    async def request_certificate(self, csr_pem: bytes, *, ttl: timedelta) -> SignedCertificate:
        """Sign ``csr_pem`` for ``ttl``; raise ``CaClientError`` (usually a subclass) when that fails."""
        ...


class _FirstAskResolver(aiohttp.abc.AbstractResolver):
    """``resolve(host)`` first, then the system's resolver."""

    def __init__(self, resolve: Callable[[str], str | None]) -> None:
        self._resolve = resolve
        self._fallback = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        import socket

        ip = self._resolve(host)
        if ip is None:
            return await self._fallback.resolve(host, port, family)
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        await self._fallback.close()


class HttpsCaClient:
    def __init__(self, *, url: str, token_path: Path, root_pem: str, timeout: float,
                 resolve: Callable[[str], str | None] | None = None) -> None:
        self._resolve = resolve
        self._url = url.rstrip("/") + CERTIFICATES_PATH
        self._token_path = token_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # only the mesh's roots: never the system's public CAs, which could vouch for an impostor
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            self._ssl.load_verify_locations(cadata=root_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise CaClientError(f"the CA trust anchor is not a PEM certificate: {exc}") from exc
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request_certificate(self, csr_pem: bytes, *, ttl: timedelta) -> SignedCertificate:
        token = self._read_token()
        body = {"csr": csr_pem.decode("ascii"), "ttl_seconds": max(1, int(ttl.total_seconds()))}
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_FirstAskResolver(self._resolve)) if self._resolve else None
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        try:
            async with self._session.post(
                self._url, json=body, headers={"Authorization": f"Bearer {token}"}, ssl=self._ssl
            ) as response:
                status = response.status
                text = await response.text()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CaUnavailableError(
                f"the CA at {self._url} presented a certificate that does not verify against the trust bundle "
                f"({exc.certificate_error}); is the mounted root-cert.pem current?"
            ) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise CaUnavailableError(
                f"cannot reach the CA at {self._url}: {exc!r}; is the ambit-identity Deployment running?"
            ) from exc
        payload = _json_or_none(text)
        if status == 201:
            return _signed_certificate(payload, url=self._url)
        reason = payload.get("error") if isinstance(payload, dict) else None
        reason = str(reason) if reason else text[:200].strip() or "no reason given"
        if 400 <= status < 500:
            raise CaRefusedError(f"the CA refused the request (HTTP {status}): {reason}", status=status, reason=reason)
        raise CaUnavailableError(f"the CA failed (HTTP {status}): {reason}")

    def _read_token(self) -> str:
        try:
            token = self._token_path.read_text().strip()
        except OSError as exc:
            raise CaClientError(
                f"cannot read the service-account token at {self._token_path}: {exc.strerror}; "
                "is the projected token volume mounted?"
            ) from exc
        if not token:
            raise CaClientError(f"the service-account token file {self._token_path} is empty")
        return token


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _signed_certificate(payload: Any, *, url: str) -> SignedCertificate:
    def bad(what: str) -> CaClientError:
        return CaClientError(f"the CA at {url} answered 201 with an unusable body: {what}; is it an Ambit CA?")

    if not isinstance(payload, dict):
        raise bad("not a JSON object")
    chain, root, expires = payload.get("certificate_chain"), payload.get("root_cert"), payload.get("expires_at")
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise bad("certificate_chain is not a list of PEM strings")
    if not isinstance(root, str) or not root:
        raise bad("root_cert is missing")
    try:
        expires_at = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"expires_at={expires!r} is not an RFC 3339 time") from None
    return SignedCertificate(chain_pem=tuple(chain), root_pem=root, expires_at=expires_at)
