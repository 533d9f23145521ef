"""Discovery documents: /version, /api, /apis (legacy and aggregated v2), APIResourceLists, OpenAPI.

kubectl asks for aggregated discovery (``APIGroupDiscoveryList``) and stops there when it gets
it; the Python ``DynamicClient`` walks the legacy documents. ``/openapi/v3`` carries one
``patch`` operation per kind with a ``fieldValidation`` parameter, which is what lets
``kubectl apply`` trust the server to validate (it then sends ``fieldValidation=Strict``).
Every document is built from the :class:`~sandbox.api.registry.Registry` at request time, so a
CRD's kinds appear (and go) with it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from .registry import Registry, ResourceType

GIT_VERSION = "v1.32.0-ambit"
Obj = dict[str, Any]

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
STATUS_VERBS = ["get", "patch", "update"]


def version_info() -> Obj:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _named_groups(registry: Registry) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for group, version in registry.group_versions():
        if group:
            groups.setdefault(group, []).append(version)
    return groups


def api_group(registry: Registry, group: str) -> Obj | None:
    versions = _named_groups(registry).get(group)
    if not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> Obj:
    groups = [api_group(registry, g) for g in _named_groups(registry)]
    for g in groups:
        assert g is not None
        g.pop("kind")
        g.pop("apiVersion")
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _subresources(rt: ResourceType) -> list[tuple[str, Obj, list[str]]]:
    """(name, responseKind, verbs) of each subresource."""
    out = []
    if rt.has_status:
        out.append(("status", {"group": rt.group, "version": rt.version, "kind": rt.kind}, STATUS_VERBS))
    if "scale" in rt.subresources:
        out.append(("scale", {"group": "autoscaling", "version": "v1", "kind": "Scale"}, STATUS_VERBS))
    if "finalize" in rt.subresources:
        out.append(("finalize", {"group": rt.group, "version": rt.version, "kind": rt.kind}, ["update"]))
    if "token" in rt.subresources:
        out.append(("token", {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, ["create"]))
    return out


def api_resource_list(registry: Registry, group: str, version: str) -> Obj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[Obj] = []
    for rt in types:
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        for name, kind, verbs in _subresources(rt):
            sub: Obj = {"name": f"{rt.plural}/{name}", "singularName": "", "namespaced": rt.namespaced, "kind": kind["kind"], "verbs": verbs}
            if kind["group"] != rt.group:
                sub["group"], sub["version"] = kind["group"], kind["version"]
            resources.append(sub)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": rt.group_version, "resources": resources}


def _aggregated_resource(rt: ResourceType) -> Obj:
    entry: Obj = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subs = [{"subresource": n, "responseKind": k, "verbs": v} for n, k, v in _subresources(rt)]
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated_discovery(registry: Registry, *, core: bool, api_version: str = "apidiscovery.k8s.io/v2") -> Obj:
    """``APIGroupDiscoveryList`` for ``/api`` (core=True) or ``/apis``."""
    items: list[Obj] = []
    groups: dict[str, list[str]] = {}
    for group, version in registry.group_versions():
        if bool(group) != core:
            groups.setdefault(group, []).append(version)
    for group, versions in groups.items():
        meta: Obj = {"creationTimestamp": None}
        if group:
            meta["name"] = group
        items.append({
            "metadata": meta,
            "versions": [
                {
                    "version": v,
                    "resources": [_aggregated_resource(rt) for rt in registry.in_group_version(group, v)],
                    "freshness": "Current",
                }
                for v in versions
            ],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items}


# ---- OpenAPI ---------------------------------------------------------------------------------


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_document(registry: Registry, group: str, version: str) -> Obj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: Obj = {}
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        ns = "/namespaces/{namespace}" if rt.namespaced else ""
        params = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "force", "in": "query", "schema": {"type": "boolean"}},
        ]
        if rt.namespaced:
            params.append({"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}})
        paths[f"/{_gv_path(rt.group, rt.version)}{ns}/{rt.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "parameters": params,
                "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (ambit sandbox)", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _hash(doc: Obj) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def openapi_v3_root(registry: Registry) -> Obj:
    paths: Obj = {}
    for group, version in registry.group_versions():
        doc = openapi_v3_document(registry, group, version)
        assert doc is not None
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(doc)}"}
    return {"paths": paths}
