"""Turn actions into calls of the official client, and client errors into ours.

- Creates go through the typed ``create_namespaced_*`` calls (the client wants a model: the dict
  is converted with ``Model.from_dict``); patches send the dict as it is, with an explicit
  Content-Type (the client would otherwise pick JSON Patch for every body); deletes carry a uid
  precondition and a propagation policy.
- Answers are read raw (``_preload_content=False``) so callers get the same camelCase JSON the
  reflectors store, resourceVersion included.
- For the namespace controller, which handles every namespaced resource the API serves (not
  only the kinds above): discovery, lists and ``deletecollection`` by path, and ``PUT
  .../finalize``, through the client's generic request call. CRD kinds (``CUSTOM_KINDS``: a
  Gateway's finalizers, the garbage collector's live owner checks) go by path the same way.
- 404 on delete and 409 on a uid precondition mean the work is already done; AlreadyExists on a
  create means the name is taken (the controller's next pass sees it); other 409s are
  ``ConflictError``; anything else is ``ApplyError``.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from sandbox.controllers.actions import Action, Create, Delete, DeleteCollection, FinalizeNamespace, Patch, Requeue
from sandbox.controllers.errors import ApplyError, ConflictError
from sandbox.controllers.objects import CUSTOM_KINDS, Kind, OwnerReference, Resource, group_of

_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}

# kind -> (API class, snake-case resource in method names, model class for creates)
_KINDS: dict[str, tuple[type, str, type]] = {
    "Pod": (k8s.CoreV1Api, "pod", k8s.V1Pod),
    "Service": (k8s.CoreV1Api, "service", k8s.V1Service),
    "Deployment": (k8s.AppsV1Api, "deployment", k8s.V1Deployment),
    "ReplicaSet": (k8s.AppsV1Api, "replica_set", k8s.V1ReplicaSet),
    "DaemonSet": (k8s.AppsV1Api, "daemon_set", k8s.V1DaemonSet),
    "EndpointSlice": (k8s.DiscoveryV1Api, "endpoint_slice", k8s.V1EndpointSlice),
    "Secret": (k8s.CoreV1Api, "secret", k8s.V1Secret),
    "ConfigMap": (k8s.CoreV1Api, "config_map", k8s.V1ConfigMap),
    "ServiceAccount": (k8s.CoreV1Api, "service_account", k8s.V1ServiceAccount),
    "RoleBinding": (k8s.RbacAuthorizationV1Api, "role_binding", k8s.V1RoleBinding),
}


class Applier:
    def __init__(self, api: k8s.ApiClient, *, timeout: float = 10.0) -> None:
        self._api = api
        self._apis = {cls: cls(api) for cls in {c for c, _, _ in _KINDS.values()}}
        self._timeout = timeout

    def apply(self, action: Action) -> dict | None:
        """Carry out one action; returns the resulting object (create/patch) or None."""
        if isinstance(action, Create):
            return self._create(action)
        if isinstance(action, Patch):
            return self._patch(action)
        if isinstance(action, Delete):
            self._delete(action)
            return None
        if isinstance(action, DeleteCollection):
            self._delete_collection(action)
            return None
        if isinstance(action, FinalizeNamespace):
            return self._finalize(action)
        if isinstance(action, Requeue):
            return None
        raise TypeError(f"BUG: unknown action {action!r}")

    def owner_exists(self, namespace: str, ref: OwnerReference) -> bool:
        """Live lookup for the garbage collector: does this exact owner (by uid) still exist?"""
        kind = ref.get("kind", "")
        custom = CUSTOM_KINDS.get(kind)  # type: ignore[call-overload]
        if custom is not None and group_of(ref.get("apiVersion", "")) == custom.group:
            try:
                obj = self._request("GET", custom.path(namespace, ref.get("name", "")),
                                    what=f"look up {kind} {namespace}/{ref.get('name')}") or {}
            except ApplyError as exc:
                if exc.status == 404:  # gone, or its CRD is (then no such owner can exist)
                    return False
                raise
            return (obj.get("metadata") or {}).get("uid") == ref.get("uid")
        if kind not in _KINDS:
            return True  # cannot tell: keep the dependent
        try:
            obj = self._call(kind, "read_namespaced_{}", ref.get("name", ""), namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _convert(exc, what=f"look up {kind} {namespace}/{ref.get('name')}") from exc
        return (obj.get("metadata") or {}).get("uid") == ref.get("uid")

    def namespace_content(self, namespace: str) -> dict[Resource, list[dict]]:
        """Live: every object in ``namespace``, for each namespaced resource that can be listed
        and deleted by collection (the namespace controller's ``NamespaceContent``)."""
        out: dict[Resource, list[dict]] = {}
        for resource in self.namespaced_resources():
            try:
                items = self._request("GET", resource.path(namespace), what=f"list {resource} in {namespace}")
            except ApplyError as exc:
                if exc.status == 404:
                    continue  # served no more (the API changed under us)
                raise
            out[resource] = list((items or {}).get("items") or [])
        return out

    def namespaced_resources(self) -> list[Resource]:
        """From the API's discovery: /api/v1, then the preferred version of each group."""
        versions = [("", "v1")]
        groups = self._request("GET", "/apis", what="discover API groups") or {}
        for g in groups.get("groups") or []:
            preferred = (g.get("preferredVersion") or {}).get("version")
            if preferred:
                versions.append((g.get("name", ""), preferred))
        out = []
        for group, version in versions:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            doc = self._request("GET", path, what=f"discover {group or 'core'}/{version}") or {}
            for r in doc.get("resources") or []:
                verbs = set(r.get("verbs") or [])
                if r.get("namespaced") and "/" not in r.get("name", "") and {"list", "deletecollection"} <= verbs:
                    out.append(Resource(group, version, r["name"]))
        return out

    # ---- verbs -----------------------------------------------------------------------------
    def _create(self, action: Create) -> dict | None:
        _, _, model = _KINDS[_check_kind(action.kind)]
        try:
            return self._call(action.kind, "create_namespaced_{}", action.namespace, model.from_dict(action.body))
        except ApiException as exc:
            if exc.status == 409 and _reason(exc) == "AlreadyExists":
                return None
            raise _convert(exc, what=action.describe()) from exc

    def _patch(self, action: Patch) -> dict | None:
        custom = CUSTOM_KINDS.get(action.kind)
        if custom is not None:
            path = custom.path(action.namespace, action.name) + (f"/{action.subresource}" if action.subresource else "")
            return self._request("PATCH", path, body=action.body, content_type=_CONTENT_TYPES[action.patch_type],
                                 what=action.describe())
        method = "patch_namespaced_{}_status" if action.subresource == "status" else "patch_namespaced_{}"
        try:
            return self._call(action.kind, method, action.name, action.namespace, action.body,
                              _content_type=_CONTENT_TYPES[action.patch_type])
        except ApiException as exc:
            raise _convert(exc, what=action.describe()) from exc

    def _delete(self, action: Delete) -> None:
        options = k8s.V1DeleteOptions(
            propagation_policy=action.propagation,
            preconditions=k8s.V1Preconditions(uid=action.uid) if action.uid else None,
        )
        try:
            self._call(action.kind, "delete_namespaced_{}", action.name, action.namespace, body=options)
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 409 and action.uid):
                return  # already gone, or replaced by a namesake we must not touch
            raise _convert(exc, what=action.describe()) from exc

    def _delete_collection(self, action: DeleteCollection) -> None:
        try:
            self._request("DELETE", action.resource.path(action.namespace), body={"propagationPolicy": "Background"},
                          what=action.describe())
        except ApplyError as exc:
            if exc.status != 404:
                raise

    def _finalize(self, action: FinalizeNamespace) -> dict | None:
        body = {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": action.name, "resourceVersion": action.resource_version or None},
            "spec": {"finalizers": list(action.finalizers)},
        }
        try:
            return self._request("PUT", f"/api/v1/namespaces/{action.name}/finalize", body=body, what=action.describe())
        except ApplyError as exc:
            if exc.status == 404:
                return None  # gone already
            raise

    def _request(self, method: str, path: str, *, what: str, body: dict | list | None = None,
                 content_type: str = "application/json") -> dict | None:
        """One request by path (for resources the typed API classes do not cover), JSON in and out."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            request = self._api.param_serialize(method=method, resource_path=path, header_params=headers,
                                                body=body, auth_settings=["BearerToken"])
            resp = self._api.call_api(*request, _request_timeout=self._timeout)
            resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApplyError(f"{what}: cannot reach the API server ({exc}); is it running?") from exc
        if not 200 <= resp.status <= 299:
            raise _convert(ApiException(http_resp=resp), what=what)
        return json.loads(resp.data) if resp.data else None

    def _call(self, kind: str, template: str, *args: Any, **kwargs: Any) -> dict:
        cls, snake, _ = _KINDS[_check_kind(kind)]
        fn: Callable[..., Any] = getattr(self._apis[cls], template.format(snake))
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApplyError(f"{template.format(snake)}: cannot reach the API server ({exc}); is it running?") from exc
        data = resp.data
        return json.loads(data) if data else {}


def _check_kind(kind: Kind | str) -> str:
    if kind not in _KINDS:
        raise ApplyError(f"BUG: the controllers do not write {kind} objects")
    return kind


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("reason") or ""
    except (ValueError, AttributeError):
        return ""


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or ""
    except (ValueError, AttributeError):
        return exc.reason or ""


def _convert(exc: ApiException, *, what: str) -> ApplyError:
    if exc.status == 409:
        return ConflictError(f"{what}: conflict ({_message(exc)}); retrying from a fresh cache",
                             status=409, reason=_reason(exc))
    if exc.status in (0, None):
        return ApplyError(f"{what}: the API server did not answer ({exc.reason}); is it running?",
                          status=0, reason="")
    return ApplyError(f"{what}: HTTP {exc.status} {_reason(exc) or exc.reason}: {_message(exc)}",
                      status=exc.status, reason=_reason(exc))
