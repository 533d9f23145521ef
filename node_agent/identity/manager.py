"""The node agent's certificates: one per service account with pods on this node.

- ``ensure(identity, holder)`` / ``release(identity, holder)``: the agent says which identities it
  needs (``holder`` is typically the pod UID; the certificate is dropped when the last holder goes);
- per identity, one named task: a fresh ECDSA P-256 key in memory, a CSR with the URI SAN, the CA
  through ``CaClient``; the answer is checked (chain, SAN, usages, our key) before it is used;
- renewal at ``renew_fraction`` of the lifetime (half-life) with +/- ``renew_jitter``; failures retry
  with capped exponential backoff, and the current certificate keeps serving until it expires;
- ``get``/``wait_ready``/``credentials`` hand out a still-valid ``Certificate``; ``trust_bundle`` the
  roots (PEM; the manager is the proxy's ``tls.CertSource`` as is);
  ``snapshot`` the admin view (never the key); ``subscribe`` tells the proxy about rotations.

All methods run on the agent's event loop; from another thread use ``loop.call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node_agent.identity.ca import certificates_pem, generate_key, load_certificates, private_key_pem
from node_agent.identity.client import CaClient, HttpsCaClient
from node_agent.identity.clock import Clock, SystemClock
from node_agent.identity.errors import CaClientError, CaError, CertificateUnavailableError, IdentityError
from node_agent.identity.settings import AgentSettings, IdentitySettings
from node_agent.identity.spiffe import SpiffeId
from node_agent.identity.validate import Usage, verify_peer

log = logging.getLogger(__name__)

Listener = Callable[[SpiffeId | None], None]
"""called with the identity whose certificate changed, or None when the trust bundle changed"""


class CertState(enum.StrEnum):
    PENDING = "pending"  # never issued yet
    VALID = "valid"
    RENEWING = "renewing"  # valid, renewal due or failing
    EXPIRED = "expired"  # the CA stayed unreachable past not_after


@dataclass(frozen=True)
class Certificate:
    """A workload certificate and its key. The key lives in memory only; ``key_pem`` is for ``tls``."""

    identity: SpiffeId
    chain_pem: str
    """leaf first, then intermediates; not the root"""
    key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    not_before: datetime
    not_after: datetime
    serial: int

    @property
    def key_pem(self) -> bytes:
        """PKCS8 PEM of the key, for ``tls.load_cert_chain_in_memory``; never write it to disk"""
        return private_key_pem(self.key)

    def is_valid_at(self, when: datetime) -> bool:
        return self.not_before <= when < self.not_after


class _Entry:
    __slots__ = ("identity", "holders", "cert", "renew_at", "renewing", "failures", "last_error", "task",
                 "changed", "expiry_logged")

    def __init__(self, identity: SpiffeId) -> None:
        self.identity = identity
        self.holders: set[str] = set()
        self.cert: Certificate | None = None
        self.renew_at: datetime | None = None
        self.renewing = False
        self.failures = 0
        self.last_error = ""
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set (and replaced) whenever cert changes or the entry goes away
        self.expiry_logged = False

    def signal(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class CertificateManager:
    def __init__(
        self,
        *,
        ca: CaClient,
        settings: AgentSettings,
        trust_domain: str,
        trust_bundle_pem: str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._ca = ca
        self._settings = settings
        self._trust_domain = trust_domain
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        try:
            self._roots = tuple(load_certificates(trust_bundle_pem, what="the initial trust bundle"))
        except CaError as exc:
            raise IdentityError(f"{exc}; mount the ambit-trust-bundle ConfigMap's root-cert.pem") from exc
        self._entries: dict[SpiffeId, _Entry] = {}
        self._listeners: list[Listener] = []
        self._owned_client: HttpsCaClient | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: IdentitySettings, *, clock: Clock | None = None) -> "CertificateManager":
        """A manager talking HTTPS to ``settings.agent.ca_url``, trusting ``settings.agent.root_cert_path``."""
        agent = settings.agent
        try:
            root_pem = agent.root_cert_path.read_text()
        except OSError as exc:
            raise IdentityError(
                f"cannot read the trust bundle at {agent.root_cert_path}: {exc.strerror}; "
                "mount the ambit-trust-bundle ConfigMap there"
            ) from exc
        client = HttpsCaClient(url=agent.ca_url, token_path=agent.token_path, root_pem=root_pem,
                               timeout=agent.request_timeout)
        manager = cls(ca=client, settings=agent, trust_domain=settings.trust_domain, trust_bundle_pem=root_pem,
                      clock=clock)
        manager._owned_client = client
        return manager

    # -- what the agent needs ----------------------------------------------------------------------
    def ensure(self, identity: SpiffeId, holder: str = "agent") -> None:
        """Hold a certificate for ``identity`` while ``holder`` (e.g. a pod UID) needs it; idempotent per holder."""
        if self._closed:
            raise IdentityError("BUG: ensure() after the certificate manager was closed")
        if identity.trust_domain != self._trust_domain:
            raise IdentityError(
                f"{identity} is in trust domain {identity.trust_domain!r}; this agent's is {self._trust_domain!r}"
            )
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
            entry.task = asyncio.get_running_loop().create_task(
                self._maintain(entry), name=f"identity-cert {identity}"
            )
            entry.task.add_done_callback(self._on_task_exit)
            log.info("requesting a certificate for %s", identity)
        entry.holders.add(holder)

    def release(self, identity: SpiffeId, holder: str = "agent") -> None:
        """``holder`` no longer needs ``identity``; the certificate and key are dropped with the last holder."""
        entry = self._entries.get(identity)
        if entry is None:
            return
        entry.holders.discard(holder)
        if entry.holders:
            return
        del self._entries[identity]
        if entry.task is not None:
            entry.task.cancel()
        entry.cert = None
        entry.signal()
        log.info("released the certificate for %s (no pod on this node uses it)", identity)

    def get(self, identity: SpiffeId) -> Certificate:
        """The current certificate, valid now; ``CertificateUnavailableError`` saying why there is none."""
        entry = self._entries.get(identity)
        if entry is None:
            raise CertificateUnavailableError(
                f"no certificate is held for {identity}: the agent has not asked for it (no pod of that "
                "service account on this node?)"
            )
        cert, now = entry.cert, self._clock.now()
        error = f"; last error: {entry.last_error}" if entry.last_error else ""
        if cert is None:
            raise CertificateUnavailableError(f"the certificate for {identity} is not issued yet{error}")
        if now >= cert.not_after:
            raise CertificateUnavailableError(
                f"the certificate for {identity} expired at {cert.not_after.isoformat()} and could not be "
                f"renewed{error}"
            )
        return cert

    async def wait_ready(self, identity: SpiffeId, timeout: float) -> Certificate:
        """Wait up to ``timeout`` real seconds for a valid certificate (``ensure`` it first)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    entry = self._entries.get(identity)
                    if entry is None:
                        return self.get(identity)  # raises: not ensured, or released while waiting
                    changed = entry.changed  # subscribe before checking, so no update is missed
                    try:
                        return self.get(identity)
                    except CertificateUnavailableError:
                        await changed.wait()
        except TimeoutError:
            entry = self._entries.get(identity)
            error = f"; last error: {entry.last_error}" if entry is not None and entry.last_error else ""
            raise CertificateUnavailableError(
                f"no valid certificate for {identity} after {timeout:g}s{error}"
            ) from None

    def credentials(self, identity: SpiffeId) -> Certificate | None:
        """``get`` for the proxy's ``CertSource``: the valid certificate, or None while there is none."""
        try:
            return self.get(identity)
        except CertificateUnavailableError:
            return None

    def trust_bundle(self) -> str:
        """PEM of the roots peers' chains must lead to: the initial bundle plus roots the CA returned since."""
        return certificates_pem(self._roots)

    def trust_roots(self) -> tuple[x509.Certificate, ...]:
        """``trust_bundle`` as certificates, for ``validate.verify_peer``"""
        return self._roots

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(identity)`` after each new certificate, ``listener(None)`` after a bundle change."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def snapshot(self) -> list[dict[str, Any]]:
        """The admin config dump's view: identities, serials, validity, state, last error. Never the key."""
        now = self._clock.now()
        rows = []
        for identity in sorted(self._entries):
            entry = self._entries[identity]
            cert = entry.cert
            rows.append({
                "identity": str(identity),
                "state": str(self._state(entry, now)),
                "serial": f"{cert.serial:x}" if cert else None,
                "not_before": cert.not_before.isoformat() if cert else None,
                "not_after": cert.not_after.isoformat() if cert else None,
                "renew_at": entry.renew_at.isoformat() if entry.renew_at else None,
                "last_error": entry.last_error or None,
                "holders": sorted(entry.holders),
            })
        return rows

    def state(self, identity: SpiffeId) -> CertState | None:
        entry = self._entries.get(identity)
        return None if entry is None else self._state(entry, self._clock.now())

    async def close(self) -> None:
        """Stop every renewal task and drop every key."""
        self._closed = True
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            if entry.task is not None:
                entry.task.cancel()
        for entry in entries:
            if entry.task is not None:
                try:
                    await entry.task
                except asyncio.CancelledError:
                    pass
            entry.cert = None
            entry.signal()
        if self._owned_client is not None:
            await self._owned_client.close()

    # -- the per-identity task ---------------------------------------------------------------------
    @staticmethod
    def _state(entry: _Entry, now: datetime) -> CertState:
        if entry.cert is None:
            return CertState.PENDING
        if now >= entry.cert.not_after:
            return CertState.EXPIRED
        return CertState.RENEWING if entry.renewing else CertState.VALID

    async def _maintain(self, entry: _Entry) -> None:
        identity = entry.identity
        while True:
            now = self._clock.now()
            if entry.cert is not None and entry.renew_at is not None and now < entry.renew_at:
                await self._clock.sleep((entry.renew_at - now).total_seconds())
                continue
            entry.renewing = entry.cert is not None
            try:
                cert, roots = await self._issue(identity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is retried; unknown ones are bugs, logged loudly
                await self._after_failure(entry, exc)
                continue
            entry.cert, entry.renewing, entry.failures, entry.last_error = cert, False, 0, ""
            entry.expiry_logged = False
            entry.renew_at = self._renewal_time(cert)
            log.info("certificate for %s: serial %x valid until %s, renewal at %s", identity, cert.serial,
                     cert.not_after.isoformat(), entry.renew_at.isoformat())
            self._add_roots(roots)
            entry.signal()
            self._notify(identity)

    async def _after_failure(self, entry: _Entry, exc: Exception) -> None:
        entry.failures += 1
        if isinstance(exc, IdentityError):
            entry.last_error = str(exc)
        else:
            entry.last_error = f"BUG: {exc!r}"
            log.error("BUG: unexpected error while getting a certificate for %s", entry.identity, exc_info=exc)
        delay = self._retry_delay(entry.failures)
        now, cert = self._clock.now(), entry.cert
        if cert is not None and now >= cert.not_after:
            if not entry.expiry_logged:
                log.error("certificate for %s expired at %s; its pods' mTLS fails until the CA answers: %s",
                          entry.identity, cert.not_after.isoformat(), entry.last_error)
                entry.expiry_logged = True
        else:
            still = f"; serving serial {cert.serial:x} until {cert.not_after.isoformat()}" if cert else ""
            log.warning("certificate request %d for %s failed: %s; retrying in %.1fs%s",
                        entry.failures, entry.identity, entry.last_error, delay, still)
        await self._clock.sleep(delay)

    async def _issue(self, identity: SpiffeId) -> tuple[Certificate, list[x509.Certificate]]:
        key = generate_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
            .sign(key, hashes.SHA256())
        )
        signed = await self._ca.request_certificate(
            csr.public_bytes(serialization.Encoding.PEM), ttl=self._settings.cert_ttl
        )
        try:
            chain = [c for pem in signed.chain_pem for c in load_certificates(pem, what="certificate_chain")]
            roots = load_certificates(signed.root_pem, what="root_cert")
        except CaError as exc:
            raise CaClientError(f"the CA returned an unusable answer: {exc}") from exc
        leaf = chain[0]
        if leaf.public_key() != key.public_key():
            raise CaClientError("the CA returned a certificate for another key; is the CA mixing up requests?")
        try:
            verify_peer(chain, roots=roots, trust_domain=self._trust_domain,
                        usage=Usage.SERVER_AUTH | Usage.CLIENT_AUTH, at=self._clock.now(), expected=identity)
        except IdentityError as exc:
            raise CaClientError(f"the CA returned a certificate Ambit cannot use: {exc}") from exc
        cert = Certificate(
            identity=identity,
            chain_pem=certificates_pem(chain),
            key=key,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
        )
        return cert, roots

    def _renewal_time(self, cert: Certificate) -> datetime:
        jitter = self._rng.uniform(-self._settings.renew_jitter, self._settings.renew_jitter)
        lifetime = cert.not_after - cert.not_before
        return cert.not_before + lifetime * (self._settings.renew_fraction * (1 + jitter))

    def _retry_delay(self, failures: int) -> float:
        initial = self._settings.retry_initial.total_seconds()
        cap = self._settings.retry_max.total_seconds()
        base = min(cap, initial * 2 ** min(failures - 1, 30))
        return min(cap, base * (1 + self._rng.uniform(-0.1, 0.1)))

    def _add_roots(self, roots: list[x509.Certificate]) -> None:
        new = [r for r in roots if r not in self._roots]
        if new:
            self._roots = (*self._roots, *new)
            log.info("trust bundle: added %d root(s) returned by the CA", len(new))
            self._notify(None)

    def _notify(self, identity: SpiffeId | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(identity)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop renewals
                log.exception("BUG: certificate listener %r failed", listener)

    def _on_task_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        log.error("BUG: %s exited: %r; its certificate will not be renewed", task.get_name(), exc, exc_info=exc)
