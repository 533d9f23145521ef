import asyncio
import heapq
import itertools
import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from node_agent.identity.ca import CertificateAuthority, certificate_pem, generate_key, read_csr
from node_agent.identity.client import SignedCertificate
from node_agent.identity.errors import CaRefusedError, CaUnavailableError, CertificateUnavailableError, IdentityError
from node_agent.identity.manager import CertificateManager, CertState
from node_agent.identity.settings import AgentSettings
from node_agent.identity.spiffe import SpiffeId

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "shop", "web")
DB = SpiffeId.for_workload(TD, "shop", "db")
HOUR = 3600.0
LIFETIME = timedelta(hours=24, minutes=1)  # not_before is backdated a minute


class FakeClock:
    """Fake time: ``sleep`` waits for ``advance``, which steps from one due sleeper to the next."""

    def __init__(self, now=T0):
        self._now = now
        self._sleepers = []
        self._seq = itertools.count()

    def now(self):
        return self._now

    async def sleep(self, seconds):
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + timedelta(seconds=max(0.0, seconds)), next(self._seq), future))
        await future

    async def advance(self, seconds):
        target = self._now + timedelta(seconds=seconds)
        await settle()
        while True:
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            due, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, due)
            future.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


class FakeCa:
    """A real CA on the fake clock, with switchable failures and a log of when it was called."""

    def __init__(self, clock):
        self.clock = clock
        self.ca = CertificateAuthority.generate(trust_domain=TD, ttl=timedelta(days=365), clock=clock)
        self.calls = []
        self.fail = None
        self.wrong_key = False

    async def request_certificate(self, csr_pem, *, ttl):
        self.calls.append(self.clock.now())
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        identity = read_csr(csr_pem, trust_domain=TD).identity
        if self.wrong_key:
            other = generate_key()
            csr_pem = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                       .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                                      critical=True)
                       .sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        issued = self.ca.sign(csr_pem, identity=identity, ttl=ttl)
        return SignedCertificate(chain_pem=tuple(certificate_pem(c) for c in issued.chain),
                                 root_pem=issued.roots_pem, expires_at=issued.not_after)


def make(*, jitter=0.1, retry_initial=1.0, retry_max=60.0, seed=7):
    clock = FakeClock()
    ca = FakeCa(clock)
    settings = AgentSettings(renew_jitter=jitter, retry_initial=timedelta(seconds=retry_initial),
                             retry_max=timedelta(seconds=retry_max))
    manager = CertificateManager(ca=ca, settings=settings, trust_domain=TD, trust_bundle_pem=ca.ca.roots_pem,
                                 clock=clock, rng=random.Random(seed))
    return clock, ca, manager


def run(scenario):
    async def main():
        clock, ca, manager = make(**scenario.kwargs) if hasattr(scenario, "kwargs") else make()
        try:
            await scenario(clock, ca, manager)
        finally:
            await manager.close()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftovers, f"tasks leaked: {leftovers}"

    asyncio.run(main())


def with_settings(**kwargs):
    def wrap(fn):
        fn.kwargs = kwargs
        return fn
    return wrap


# ---- issuance ------------------------------------------------------------------------------------------
def test_first_certificate_is_issued_and_verifiable():
    async def scenario(clock, ca, manager):
        manager.ensure(WEB, "pod-1")
        assert manager.state(WEB) is CertState.PENDING
        cert = await manager.wait_ready(WEB, timeout=5)
        assert cert.identity == WEB
        assert cert.not_before == T0 - timedelta(minutes=1) and cert.not_after == T0 + timedelta(hours=24)
        leaf_pem = cert.chain_pem
        assert "PRIVATE" not in leaf_pem
        assert cert.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        assert manager.get(WEB) is cert
        assert manager.state(WEB) is CertState.VALID
        assert manager.trust_roots() == ca.ca.roots and manager.trust_bundle() == ca.ca.roots_pem
        assert manager.credentials(WEB) is cert and manager.credentials(DB) is None
        assert "key" not in repr(cert).lower().replace("keyusage", "")
        assert len(ca.calls) == 1

    run(scenario)


def test_snapshot_shows_state_and_never_the_key():
    async def scenario(clock, ca, manager):
        manager.ensure(WEB, "pod-1")
        manager.ensure(DB, "pod-2")
        ca.fail = None
        cert = await manager.wait_ready(WEB, timeout=5)
        await manager.wait_ready(DB, timeout=5)
        rows = manager.snapshot()
        assert [r["identity"] for r in rows] == [str(DB), str(WEB)]
        web = rows[1]
        assert web["state"] == "valid" and web["serial"] == f"{cert.serial:x}"
        assert web["not_after"] == "2030-01-02T00:00:00+00:00" and web["last_error"] is None
        assert web["holders"] == ["pod-1"]
        dumped = json.dumps(rows)
        assert "PRIVATE" not in dumped and cert.key_pem.decode() not in dumped

    run(scenario)


# ---- renewal -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_renewal_happens_at_half_life_within_jitter(seed):
    @with_settings(seed=seed)
    async def scenario(clock, ca, manager):
        manager.ensure(WEB)
        first = await manager.wait_ready(WEB, timeout=5)
        await clock.advance(0.449 * LIFETIME.total_seconds())
        assert manager.get(WEB).serial == first.serial and len(ca.calls) == 1
        await clock.advance(0.102 * LIFETIME.total_seconds())  # now past 0.551 of the lifetime
        assert len(ca.calls) == 2
        renewed_at = (ca.calls[1] - first.not_before) / LIFETIME
        assert 0.45 <= renewed_at <= 0.55
        second = manager.get(WEB)
        assert second.serial != first.serial and second.not_after > first.not_after
        assert second.key is not first.key  # a fresh key per renewal
        assert manager.state(WEB) is CertState.VALID

    run(scenario)


def test_renewal_without_jitter_is_exactly_half_life():
    @with_settings(jitter=0.0)
    async def scenario(clock, ca, manager):
        manager.ensure(WEB)
        first = await manager.wait_ready(WEB, timeout=5)
        await clock.advance(13 * HOUR)
        assert ca.calls[1] == first.not_before + LIFETIME / 2
        assert manager.snapshot()[0]["renew_at"] == (manager.get(WEB).not_before + LIFETIME / 2).isoformat()

    run(scenario)


def test_listeners_hear_each_new_certificate():
    async def scenario(clock, ca, manager):
        heard = []
        unsubscribe = manager.subscribe(heard.append)
        manager.ensure(WEB)
        await manager.wait_ready(WEB, timeout=5)
        await clock.advance(14 * HOUR)
        assert heard == [WEB, WEB]
        unsubscribe()
        await clock.advance(14 * HOUR)
        assert heard == [WEB, WEB]

    run(scenario)


# ---- failures ------------------------------------------------------------------------------------------
def test_backoff_doubles_and_is_capped():
    @with_settings(retry_initial=1.0, retry_max=8.0)
    async def scenario(clock, ca, manager):
        ca.fail = CaUnavailableError("cannot reach the CA")
        manager.ensure(WEB)
        await clock.advance(60)
        gaps = [(b - a).total_seconds() for a, b in zip(ca.calls, ca.calls[1:])]
        expected = [1, 2, 4, 8, 8, 8]
        assert len(gaps) >= len(expected)
        for gap, want in zip(gaps, expected):
            assert want * 0.9 <= gap <= want * 1.1 + 1e-6, (gaps, expected)
        assert all(gap <= 8.0 + 1e-6 for gap in gaps)
        assert manager.state(WEB) is CertState.PENDING
        with pytest.raises(CertificateUnavailableError, match="not issued yet; last error: cannot reach the CA"):
            manager.get(WEB)

    run(scenario)


def test_backoff_resets_after_success():
    @with_settings(jitter=0.0, retry_initial=1.0, retry_max=60.0)
    async def scenario(clock, ca, manager):
        ca.fail = CaUnavailableError("down")
        manager.ensure(WEB)
        await clock.advance(100)  # 1+2+4+8+16+32+... several failures
        failures = len(ca.calls)
        ca.fail = None
        await clock.advance(60)
        assert len(ca.calls) == failures + 1 and manager.state(WEB) is CertState.VALID
        ca.fail = CaUnavailableError("down again")
        cert = manager.get(WEB)
        await clock.advance((cert.not_before + LIFETIME / 2 - clock.now()).total_seconds() + 0.5)
        first_retry_at = len(ca.calls)
        await clock.advance(1.05)
        assert len(ca.calls) == first_retry_at + 1  # back to a 1 s delay

    run(scenario)


def test_keeps_serving_the_valid_certificate_while_the_ca_is_down():
    @with_settings(retry_max=60.0)
    async def scenario(clock, ca, manager):
        manager.ensure(WEB)
        cert = await manager.wait_ready(WEB, timeout=5)
        ca.fail = CaUnavailableError("cannot reach the CA at https://ambit-identity: connection refused")
        await clock.advance(0.95 * LIFETIME.total_seconds())
        assert manager.get(WEB) is cert
        assert manager.state(WEB) is CertState.RENEWING
        row = manager.snapshot()[0]
        assert row["state"] == "renewing" and "connection refused" in row["last_error"]
        attempts = len(ca.calls)
        assert attempts > 100  # retried all along (every minute at most)
        ca.fail = None
        await clock.advance(61)
        renewed = manager.get(WEB)
        assert renewed.serial != cert.serial and manager.state(WEB) is CertState.VALID
        assert manager.snapshot()[0]["last_error"] is None

    run(scenario)


def test_certificate_expires_when_the_ca_stays_down():
    async def scenario(clock, ca, manager):
        manager.ensure(WEB)
        cert = await manager.wait_ready(WEB, timeout=5)
        ca.fail = CaRefusedError("the CA refused the request (HTTP 403): no pod", status=403, reason="no pod")
        await clock.advance((cert.not_after - clock.now()).total_seconds() + 1)
        assert manager.state(WEB) is CertState.EXPIRED
        with pytest.raises(CertificateUnavailableError, match="expired at 2030-01-02T00:00:00.*no pod"):
            manager.get(WEB)
        assert manager.snapshot()[0]["state"] == "expired"
        ca.fail = None
        await clock.advance(61)
        assert manager.state(WEB) is CertState.VALID and manager.get(WEB).not_after > clock.now()

    run(scenario)


def test_a_certificate_for_another_key_is_refused():
    async def scenario(clock, ca, manager):
        ca.wrong_key = True
        manager.ensure(WEB)
        await clock.advance(0.5)
        assert manager.state(WEB) is CertState.PENDING
        assert "for another key" in manager.snapshot()[0]["last_error"]

    run(scenario)


def test_wait_ready_times_out_with_the_last_error():
    async def scenario(clock, ca, manager):
        ca.fail = CaRefusedError("the CA refused the request (HTTP 403): caller is not the node agent",
                                 status=403, reason="caller is not the node agent")
        manager.ensure(WEB)
        with pytest.raises(CertificateUnavailableError, match="after 0.05s; last error: .*not the node agent"):
            await manager.wait_ready(WEB, timeout=0.05)

    run(scenario)


# ---- ensure / release ----------------------------------------------------------------------------------
def test_release_with_the_last_holder_drops_the_certificate():
    async def scenario(clock, ca, manager):
        manager.ensure(WEB, "pod-1")
        manager.ensure(WEB, "pod-2")
        manager.ensure(WEB, "pod-2")  # idempotent per holder
        await manager.wait_ready(WEB, timeout=5)
        manager.release(WEB, "pod-2")
        assert manager.get(WEB)
        manager.release(WEB, "pod-1")
        with pytest.raises(CertificateUnavailableError, match="no certificate is held"):
            manager.get(WEB)
        assert manager.snapshot() == []
        calls = len(ca.calls)
        await clock.advance(48 * HOUR)
        assert len(ca.calls) == calls  # no renewal for a released identity
        manager.release(WEB, "pod-1")  # releasing again is harmless

    run(scenario)


def test_wait_ready_fails_when_released_meanwhile():
    async def scenario(clock, ca, manager):
        ca.fail = CaUnavailableError("down")
        manager.ensure(WEB)
        waiter = asyncio.ensure_future(manager.wait_ready(WEB, timeout=5))
        await settle()
        manager.release(WEB)
        with pytest.raises(CertificateUnavailableError, match="no certificate is held"):
            await waiter

    run(scenario)


def test_identity_of_another_trust_domain_is_refused():
    async def scenario(clock, ca, manager):
        with pytest.raises(IdentityError, match="trust domain 'other.td'"):
            manager.ensure(SpiffeId.for_workload("other.td", "shop", "web"))

    run(scenario)


def test_bad_initial_trust_bundle_is_refused():
    with pytest.raises(IdentityError, match="mount the ambit-trust-bundle"):
        CertificateManager(ca=None, settings=AgentSettings(), trust_domain=TD, trust_bundle_pem="nope")
