"""Where another demo service is: an explicit address, or its ClusterIP from the in-cluster API.

The sandbox has no cluster DNS, so a name like ``emoji`` means nothing to a pod. ``Upstream``
answers "which ip:port is the emoji Service?" in this order:
1. ``<NAME>_ADDR=host:port`` in the environment (tests, or running the demo by hand);
2. the Service's ClusterIP and port (the one named ``http``, else the first) read from the
   Kubernetes API the way ``load_incluster_config()`` would find it: KUBERNETES_SERVICE_HOST/PORT
   and the service-account token, CA and namespace under
   /var/run/secrets/kubernetes.io/serviceaccount (standard library only: urllib + ssl).
An answer is reused for ``refresh`` seconds; after a failure the next attempt waits ``retry``
seconds, and a previous answer keeps serving meanwhile. With no answer at all, ``address()``
raises ``Unresolved`` and the caller says 503.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

from sandbox.demo.service import Address, parse_address

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
log = logging.getLogger("sandbox.demo.upstream")


class Unresolved(Exception):
    """The Service's address is unknown for now (the message says why and what to set)."""


class Upstream:
    def __init__(
        self,
        service: str,
        *,
        environ: Mapping[str, str],
        env_var: str = "",
        sa_dir: Path = SA_DIR,
        refresh: float = 30.0,
        retry: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.env_var = env_var or f"{service.upper().replace('-', '_')}_ADDR"
        self._environ = environ
        self._sa_dir = sa_dir
        self._refresh = refresh
        self._retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._addr: Address | None = None
        self._resolved_at = 0.0
        self._failed_at: float | None = None
        self._last_error = ""
        explicit = environ.get(self.env_var, "").strip()
        self._explicit = parse_address(explicit, variable=self.env_var) if explicit else None

    @property
    def namespace(self) -> str:
        """``POD_NAMESPACE``, else the service account's namespace file, else ``demo``."""
        if self._environ.get("POD_NAMESPACE"):
            return self._environ["POD_NAMESPACE"]
        try:
            return (self._sa_dir / "namespace").read_text().strip() or "demo"
        except OSError:
            return "demo"

    def address(self) -> Address:
        if self._explicit is not None:
            return self._explicit
        with self._lock:
            now = self._clock()
            fresh = self._addr is not None and now - self._resolved_at < self._refresh
            backing_off = self._failed_at is not None and now - self._failed_at < self._retry
            if fresh or backing_off:
                if self._addr is not None:
                    return self._addr
                raise Unresolved(self._last_error)
            try:
                addr = self._lookup()
            except Unresolved as exc:
                self._failed_at, self._last_error = now, str(exc)
                if self._addr is not None:
                    log.warning("%s; still using %s:%d", exc, *self._addr)
                    return self._addr
                raise
            if addr != self._addr:
                log.info("service %s/%s is at %s:%d", self.namespace, self.service, *addr)
            self._addr, self._resolved_at, self._failed_at = addr, now, None
            return addr

    def _lookup(self) -> Address:
        host = self._environ.get("KUBERNETES_SERVICE_HOST", "")
        port = self._environ.get("KUBERNETES_SERVICE_PORT", "443")
        where = f"service {self.namespace}/{self.service}"
        if not host:
            raise Unresolved(f"{where}: no {self.env_var} and not in a cluster (KUBERNETES_SERVICE_HOST unset); "
                             f"set {self.env_var}=host:port")
        try:
            token = (self._sa_dir / "token").read_text().strip()
            ctx = ssl.create_default_context(cafile=str(self._sa_dir / "ca.crt"))
        except (OSError, ssl.SSLError) as exc:
            raise Unresolved(f"{where}: cannot read the service-account credentials in {self._sa_dir} ({exc}); "
                             "is a token mounted (automountServiceAccountToken)?") from exc
        api_host = f"[{host}]" if ":" in host else host
        url = f"https://{api_host}:{port}/api/v1/namespaces/{self.namespace}/services/{self.service}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=3) as resp:
                svc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            hint = "does the Service exist?" if exc.code == 404 else "may this service account read services?"
            raise Unresolved(f"{where}: the API answered HTTP {exc.code}; {hint}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unresolved(f"{where}: cannot ask the API at {host}:{port} ({exc})") from exc
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            raise Unresolved(f"{where} has no ClusterIP and port to connect to (headless or portless)")
        chosen = next((p for p in ports if p.get("name") == "http"), ports[0])
        return ip, int(chosen["port"])
