"""SPIFFE IDs for Kubernetes workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

The checks follow the SPIFFE ID specification (lowercase trust domain of ``[a-z0-9.-_]``, no port,
user info, query or fragment, no empty, ``.`` or ``..`` path segments) narrowed to the one path
shape Ambit issues: a namespace (a DNS-1123 label) and a service account (a DNS-1123 subdomain).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from node_agent.identity.errors import SpiffeIdError

_SCHEME = "spiffe://"
_MAX_URI_LEN = 2048
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]+$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not self.trust_domain or not _TRUST_DOMAIN_RE.match(self.trust_domain) or len(self.trust_domain) > 255:
            raise SpiffeIdError(
                f"trust domain {self.trust_domain!r} is invalid; use lowercase letters, digits, '.', '-' "
                "and '_' only, e.g. 'cluster.local'"
            )
        if len(self.namespace) > 63 or not _LABEL_RE.match(self.namespace):
            raise SpiffeIdError(
                f"namespace {self.namespace!r} is not a valid Kubernetes namespace name "
                "(a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters)"
            )
        if len(self.service_account) > 253 or not _SUBDOMAIN_RE.match(self.service_account):
            raise SpiffeIdError(
                f"service account {self.service_account!r} is not a valid Kubernetes service account name "
                "(a DNS-1123 subdomain: lowercase letters, digits, '-' and '.')"
            )

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> "SpiffeId":
        """The identity of pods running as ``service_account`` in ``namespace``."""
        return cls(trust_domain=trust_domain, namespace=namespace, service_account=service_account)

    @classmethod
    def parse(cls, uri: str) -> "SpiffeId":
        """Parse ``spiffe://<td>/ns/<ns>/sa/<sa>``; raise ``SpiffeIdError`` saying what is wrong."""
        if not isinstance(uri, str):
            raise SpiffeIdError(f"a SPIFFE ID must be a string, not {type(uri).__name__}")
        if len(uri) > _MAX_URI_LEN:
            raise SpiffeIdError(f"SPIFFE ID is {len(uri)} characters long; the limit is {_MAX_URI_LEN}")
        if not uri.startswith(_SCHEME):
            raise SpiffeIdError(f"{uri!r} is not a SPIFFE ID: it must start with 'spiffe://' (lowercase)")
        rest = uri[len(_SCHEME):]
        for char, what in (("?", "a query"), ("#", "a fragment"), ("@", "user info"), (":", "a port")):
            if char in rest:
                raise SpiffeIdError(f"SPIFFE ID {uri!r} must not contain {what} ({char!r})")
        trust_domain, slash, path = rest.partition("/")
        if not trust_domain:
            raise SpiffeIdError(f"SPIFFE ID {uri!r} has no trust domain")
        if not slash:
            raise SpiffeIdError(f"SPIFFE ID {uri!r} has no path; expected /ns/<namespace>/sa/<service-account>")
        segments = path.split("/")
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise SpiffeIdError(
                f"SPIFFE ID {uri!r} has path '/{path}'; expected /ns/<namespace>/sa/<service-account>"
            )
        return cls(trust_domain=trust_domain, namespace=segments[1], service_account=segments[3])

    @property
    def uri(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri
