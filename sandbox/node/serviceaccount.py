"""Service-account credentials of a pod, laid out as Kubernetes projects them.

``<pod dir>/serviceaccount/{token,ca.crt,namespace}``, bind-mounted read-only by the launcher at
/var/run/secrets/kubernetes.io/serviceaccount, so ``load_incluster_config()`` works unchanged.
The token is a TokenRequest bound to the pod; it is rewritten atomically (rename) when it is
refreshed at 80% of its lifetime, and the directory mount shows the new file at once.
"""
from __future__ import annotations

import os
from pathlib import Path

REFRESH_FRACTION = 0.8


def service_account_name(pod: dict) -> str:
    return (pod.get("spec") or {}).get("serviceAccountName") or "default"


def wants_token(pod: dict) -> bool:
    """``automountServiceAccountToken: false`` on the pod opts out (the ServiceAccount's own
    field is not consulted: the sandbox kubelet does not read ServiceAccounts)."""
    return (pod.get("spec") or {}).get("automountServiceAccountToken") is not False


def refresh_after(issued_at: float, expires_at: float) -> float:
    """When to fetch a new token: 80% into its lifetime, as the kubelet's token manager does."""
    return issued_at + max(1.0, (expires_at - issued_at) * REFRESH_FRACTION)


def write_file(directory: Path, name: str, data: bytes, *, mode: int = 0o644) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"..{name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, directory / name)


def write_credentials(directory: Path, *, token: str, ca: bytes, namespace: str) -> None:
    write_file(directory, "ca.crt", ca)
    write_file(directory, "namespace", namespace.encode())
    write_file(directory, "token", token.encode(), mode=0o600)
