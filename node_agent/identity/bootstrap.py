"""Starting the CA: load its material from the ``ambit-ca`` Secret or create it, publish the trust bundle.

Several CA replicas may start at once on a fresh cluster. Each generates a root, but only the first
create of the Secret wins; the others get 409 AlreadyExists, re-read the Secret and use the winner's
material, so every replica signs with the same key. The ``ambit-trust-bundle`` ConfigMap is then
brought in line with the Secret's ``root-cert.pem`` (written only when it differs).
"""
from __future__ import annotations

import logging
from typing import Protocol

from node_agent.identity.ca import BUNDLE_ROOT_CERT, CertificateAuthority
from node_agent.identity.clock import Clock
from node_agent.identity.errors import ClusterApiError
from node_agent.identity.settings import IdentitySettings

log = logging.getLogger(__name__)


class CaSecretStore(Protocol):
    """Where the CA keeps its material: the Kubernetes API in production (``kube.KubeCaSecretStore``)."""

    async def read_secret(self, *, namespace: str, name: str) -> dict[str, bytes] | None:
        """the Secret's decoded data, or None when it does not exist"""
        ...

    async def create_secret(self, *, namespace: str, name: str, data: dict[str, bytes]) -> bool:
        """create the Secret; False when it already exists (409), so the caller re-reads"""
        ...

    async def read_config_map(self, *, namespace: str, name: str) -> dict[str, str] | None:
        """the ConfigMap's data, or None when it does not exist"""
        ...

    async def write_config_map(self, *, namespace: str, name: str, data: dict[str, str]) -> None:
        """create the ConfigMap, or replace its data"""
        ...


async def load_or_create_ca(store: CaSecretStore, *, settings: IdentitySettings, clock: Clock) -> CertificateAuthority:
    """The CA from the Secret; on first start a new self-signed root, stored there (first writer wins)."""
    ns, name = settings.ca.namespace, settings.ca.secret_name
    source = f"Secret {ns}/{name}"
    data = await store.read_secret(namespace=ns, name=name)
    if data is None:
        fresh = CertificateAuthority.generate(
            trust_domain=settings.trust_domain, ttl=settings.ca.root_ttl, clock=clock, backdate=settings.ca.backdate
        )
        if await store.create_secret(namespace=ns, name=name, data=fresh.secret_data()):
            log.info("created a new self-signed root CA in %s (valid until %s)", source, fresh.not_after.isoformat())
            return fresh
        log.info("%s was created by another CA replica; using its material", source)
        data = await store.read_secret(namespace=ns, name=name)
        if data is None:
            raise ClusterApiError(f"{source} exists (create returned 409) but cannot be read; check the CA's RBAC")
    ca = CertificateAuthority.from_secret_data(
        data, trust_domain=settings.trust_domain, clock=clock, backdate=settings.ca.backdate, source=source
    )
    log.info("loaded the CA from %s (issuer valid until %s)", source, ca.not_after.isoformat())
    return ca


async def publish_trust_bundle(store: CaSecretStore, ca: CertificateAuthority, *, settings: IdentitySettings) -> bool:
    """Make the trust-bundle ConfigMap hold the CA's roots; True when it had to be written."""
    ns, name = settings.ca.namespace, settings.ca.trust_bundle_config_map
    current = await store.read_config_map(namespace=ns, name=name)
    wanted = ca.roots_pem
    if current is not None and current.get(BUNDLE_ROOT_CERT) == wanted:
        return False
    await store.write_config_map(namespace=ns, name=name, data={BUNDLE_ROOT_CERT: wanted})
    log.info("published the trust bundle in ConfigMap %s/%s", ns, name)
    return True
