"""The identity package's Kubernetes adapters; the only module here that imports the ``kubernetes`` client.

- ``KubeClusterApi``: TokenReview and pod reads for authorization (``authz.ClusterApi``)
- ``KubeCaSecretStore``: the CA Secret and trust-bundle ConfigMap (``bootstrap.CaSecretStore``)

The client is synchronous; every call runs in a worker thread so the CA's event loop keeps serving.
Failures become ``ClusterApiError`` with the HTTP status and a hint.
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from node_agent.identity.authz import PodInfo, TokenReviewResult
from node_agent.identity.errors import ClusterApiError

T = TypeVar("T")


class _PodMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str


class _PodSpec(TypedDict, total=False):
    nodeName: str
    serviceAccountName: str


class _PodStatus(TypedDict, total=False):
    phase: str


class PodJson(TypedDict, total=False):
    metadata: _PodMeta
    spec: _PodSpec
    status: _PodStatus


def pod_info(raw: PodJson) -> PodInfo:
    meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
    return PodInfo(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        node_name=spec.get("nodeName") or "",
        service_account=spec.get("serviceAccountName") or "default",
        phase=status.get("phase") or "Pending",
    )


def _call(what: str, hint: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise ClusterApiError(f"{what} failed: HTTP {exc.status} {exc.reason}; {hint}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterApiError(f"{what} failed: {exc}; is the Kubernetes API reachable?") from exc


def _json(response: Any) -> Any:
    return json.loads(response.data)


class KubeClusterApi:
    def __init__(self, api_client: k8s.ApiClient, *, timeout: float) -> None:
        self._auth = k8s.AuthenticationV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._timeout = timeout

    async def review_token(self, token: str, *, audience: str) -> TokenReviewResult:
        return await asyncio.to_thread(self._review_token, token, audience)

    async def get_pod(self, *, namespace: str, name: str) -> PodInfo | None:
        return await asyncio.to_thread(self._get_pod, namespace, name)

    async def list_pods_on_node(self, *, namespace: str, node_name: str) -> list[PodInfo]:
        return await asyncio.to_thread(self._list_pods_on_node, namespace, node_name)

    def _review_token(self, token: str, audience: str) -> TokenReviewResult:
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token, audiences=[audience]),
        )
        review = _call(
            "TokenReview", "does the CA's service account have the system:auth-delegator ClusterRole?",
            self._auth.create_token_review, body, _request_timeout=self._timeout,
        )
        status = review.status or k8s.V1TokenReviewStatus()
        user = status.user or k8s.V1UserInfo()
        return TokenReviewResult(
            authenticated=bool(status.authenticated),
            username=user.username or "",
            uid=user.uid or "",
            extra={k: tuple(v or ()) for k, v in (user.extra or {}).items()},
            audiences=tuple(status.audiences or ()),
            error=status.error or "",
        )

    def _get_pod(self, namespace: str, name: str) -> PodInfo | None:
        try:
            response = self._core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterApiError(
                f"reading pod {namespace}/{name} failed: HTTP {exc.status} {exc.reason}; "
                "may the CA's service account get pods?"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterApiError(f"reading pod {namespace}/{name} failed: {exc}; is the Kubernetes API reachable?") from exc
        return pod_info(_json(response))

    def _list_pods_on_node(self, namespace: str, node_name: str) -> list[PodInfo]:
        response = _call(
            f"listing pods of namespace {namespace} on node {node_name}", "may the CA's service account list pods?",
            self._core.list_namespaced_pod, namespace, field_selector=f"spec.nodeName={node_name}",
            _preload_content=False, _request_timeout=self._timeout,
        )
        return [pod_info(item) for item in _json(response).get("items") or []]


class KubeCaSecretStore:
    """``owner_deployment``: the CA's own Deployment (in the namespace of the objects). The Secret and
    ConfigMap the CA creates carry an ownerReference to it, so uninstalling Ambit (``helm uninstall``,
    ``ambit uninstall``) garbage-collects the generated root with everything else."""

    def __init__(self, api_client: k8s.ApiClient, *, timeout: float, owner_deployment: str | None = None) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._apps = k8s.AppsV1Api(api_client)
        self._timeout = timeout
        self._owner_deployment = owner_deployment

    def _metadata(self, namespace: str, name: str) -> dict:
        meta: dict = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "ambit"}}
        if self._owner_deployment:
            owner = self._read("deployment", self._apps.read_namespaced_deployment, namespace, self._owner_deployment)
            if owner is None:
                raise ClusterApiError(f"the CA's Deployment {namespace}/{self._owner_deployment}, the owner of what it "
                                      "creates, does not exist; is --owner-deployment its name?")
            owner_meta = owner["metadata"]
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": owner_meta["name"],
                                        "uid": owner_meta["uid"]}]
            # the owner's chart labels too: `kubectl get -l app.kubernetes.io/instance=ambit` shows them
            meta["labels"].update({k: v for k, v in (owner_meta.get("labels") or {}).items()
                                   if k.startswith(("app.kubernetes.io/", "helm.sh/"))})
        return meta

    async def read_secret(self, *, namespace: str, name: str) -> dict[str, bytes] | None:
        return await asyncio.to_thread(self._read_secret, namespace, name)

    async def create_secret(self, *, namespace: str, name: str, data: dict[str, bytes]) -> bool:
        return await asyncio.to_thread(self._create_secret, namespace, name, data)

    async def read_config_map(self, *, namespace: str, name: str) -> dict[str, str] | None:
        raw = await asyncio.to_thread(self._read_config_map, namespace, name)
        return None if raw is None else dict(raw.get("data") or {})

    async def write_config_map(self, *, namespace: str, name: str, data: dict[str, str]) -> None:
        await asyncio.to_thread(self._write_config_map, namespace, name, data)

    def _read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        raw = self._read("secret", self._core.read_namespaced_secret, namespace, name)
        if raw is None:
            return None
        return {k: base64.b64decode(v) for k, v in (raw.get("data") or {}).items()}

    def _create_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(namespace, name),
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
        }
        return self._create("Secret", self._core.create_namespaced_secret, namespace, body)

    def _read_config_map(self, namespace: str, name: str) -> dict | None:
        return self._read("configmap", self._core.read_namespaced_config_map, namespace, name)

    def _write_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        for _ in range(3):  # optimistic concurrency: another replica may write between our read and write
            current = self._read_config_map(namespace, name)
            if current is None:
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": self._metadata(namespace, name),
                        "data": data}
                if self._create("ConfigMap", self._core.create_namespaced_config_map, namespace, body):
                    return
                continue
            current["data"] = data
            try:
                self._core.replace_namespaced_config_map(
                    name, namespace, current, _preload_content=False, _request_timeout=self._timeout
                )
                return
            except ApiException as exc:
                if exc.status in (404, 409):
                    continue
                raise ClusterApiError(
                    f"updating ConfigMap {namespace}/{name} failed: HTTP {exc.status} {exc.reason}; "
                    "may the CA's service account update configmaps?"
                ) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ClusterApiError(f"updating ConfigMap {namespace}/{name} failed: {exc}") from exc
        raise ClusterApiError(f"ConfigMap {namespace}/{name} kept changing while being written; restart the CA")

    def _read(self, kind: str, fn: Callable[..., Any], namespace: str, name: str) -> dict | None:
        try:
            return _json(fn(name, namespace, _preload_content=False, _request_timeout=self._timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterApiError(
                f"reading {kind} {namespace}/{name} failed: HTTP {exc.status} {exc.reason}; "
                f"may the CA's service account get {kind}s in {namespace}?"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterApiError(f"reading {kind} {namespace}/{name} failed: {exc}; is the Kubernetes API reachable?") from exc

    def _create(self, kind: str, fn: Callable[..., Any], namespace: str, body: dict) -> bool:
        try:
            fn(namespace, body, _preload_content=False, _request_timeout=self._timeout)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise ClusterApiError(
                f"creating {kind} {namespace}/{body['metadata']['name']} failed: HTTP {exc.status} {exc.reason}; "
                f"does namespace {namespace} exist and may the CA's service account create {kind.lower()}s?"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterApiError(f"creating {kind} {namespace}/{body['metadata']['name']} failed: {exc}") from exc
