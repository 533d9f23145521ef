"""What each verb does to objects: the rules between an HTTP request and the store.

- create/update/patch/delete with Kubernetes semantics: generateName, uid, timestamps,
  generation, optimistic concurrency on ``metadata.resourceVersion``, status subresources (writes
  to the main resource keep the old status, ``/status`` writes change only status), finalizers,
  namespace existence;
- deletes with a propagation policy: ``Foreground``/``Orphan`` keep an owner that has dependents
  under the garbage collector's finalizer (rules in ``deletion``);
- namespace deletion as Kubernetes does it: DELETE marks the namespace Terminating (no new content
  may be created in it), the namespace controller (``sandbox.controllers.namespace``) empties it
  and removes the ``kubernetes`` finalizer through ``/finalize``, and the namespace goes when no
  finalizer (``spec`` or ``metadata``) is left;
- custom resources: a CustomResourceDefinition's write (re)registers its kinds in the
  :class:`~sandbox.api.registry.Registry` (served at once, rebuilt from the store at start), its
  objects are pruned, defaulted and validated by their version's schema (``structural``) and
  stored at the storage version, and deleting the CRD deletes every object of its kind;
- ClusterIP (from ``cfg.service_cidr``) and NodePort allocation for Services;
- bootstrap: namespaces ``default``, ``kube-system``, ``kube-public`` with their ``default``
  ServiceAccounts, and the ``default/kubernetes`` Service pointing at this API;
- TokenRequest / TokenReview and bearer-token authentication (admin token or service-account JWT).
"""
from __future__ import annotations

import copy
import hmac
import ipaddress
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sandbox.config import SandboxConfig

from . import admission, crds, errors, jsonpath
from .deletion import DeleteOptions, finalizers_after
from .errors import BadRequest, Invalid, NotFound
from .patch import PatchApplyError, PatchFormatError, apply_patch, json_patch, merge_patch, strategic_merge_patch
from .registry import CRD, NAMESPACE, POD, SERVICE, SERVICE_ACCOUNT, Registry, ResourceType, ScalePaths
from .selectors import FieldSelector, LabelSelector, label_selector_from_dict, unsupported_fields
from .store import Store, Stored, dumps
from .tokens import BoundPod, TokenClaims, TokenInvalid, TokenIssuer, looks_like_jwt
from .validation import invalid_cause

Obj = dict[str, Any]

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH, "application/apply-patch+json")
NODE_PORTS = range(30000, 32768)
COLLECTED_OWNERS = ("deployments.apps", "replicasets.apps", "daemonsets.apps", "services", "gateways.gateway.networking.k8s.io")
"""the owner kinds whose dependents the sandbox garbage collector handles (its OWNER_KINDS)"""
FIELD_VALIDATION = ("Strict", "Warn", "Ignore")
"""``?fieldValidation=``: what unknown fields of a custom resource do (Warn when not asked)"""
MIN_TOKEN_SECONDS = 600
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class User:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def as_dict(self) -> Obj:
        out: Obj = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra}
        return out


ADMIN = User("kubernetes-admin", groups=("system:masters", "system:authenticated"))


class ServiceIPs:
    """ClusterIP allocation from the service CIDR; the first address belongs to ``kubernetes``."""

    def __init__(self, cidr: ipaddress.IPv4Network) -> None:
        self.cidr = cidr
        self.used: set[ipaddress.IPv4Address] = set()
        self._first = cidr.network_address + 1
        self._next = cidr.network_address + 2

    def reserve(self, ip: str) -> None:
        try:
            self.used.add(ipaddress.IPv4Address(ip))
        except ValueError:
            pass

    def release(self, ip: str | None) -> None:
        try:
            self.used.discard(ipaddress.IPv4Address(ip or ""))
        except ValueError:
            pass

    def allocate(self, requested: str | None, *, dry_run: bool = False) -> str:
        if requested:
            try:
                ip = ipaddress.IPv4Address(requested)
            except ValueError:
                raise ValueError(f"failed to allocate IP {requested}: not a valid IPv4 address") from None
            if ip not in self.cidr or ip in (self.cidr.network_address, self.cidr.broadcast_address):
                raise ValueError(f"failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {self.cidr}")
            if ip in self.used:
                raise ValueError(f"failed to allocate IP {requested}: provided IP is already allocated")
        else:
            size = self.cidr.num_addresses - 3
            ip = self._next
            for _ in range(size):
                if ip not in self.used and ip != self._first:
                    break
                ip = ip + 1 if ip + 1 < self.cidr.broadcast_address else self.cidr.network_address + 2
            else:
                raise ValueError(f"failed to allocate a cluster IP: the range {self.cidr} is full")
            if not dry_run:
                self._next = ip + 1 if ip + 1 < self.cidr.broadcast_address else self.cidr.network_address + 2
        if not dry_run:
            self.used.add(ip)
        return str(ip)


class Resources:
    def __init__(self, store: Store, *, cfg: SandboxConfig, issuer: TokenIssuer, admin_token: str) -> None:
        self.store = store
        self.cfg = cfg
        self.issuer = issuer
        self._admin_token = admin_token
        self.registry = Registry()
        for crd in store.list(CRD.key):
            self.registry.set_custom(crd.obj["metadata"]["name"], crds.served_types(crd.obj))
        self.ips = ServiceIPs(cfg.service_cidr)
        self.node_ports: set[int] = set()
        for s in store.list(SERVICE.key):
            spec = s.obj.get("spec") or {}
            for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                if ip and ip != "None":
                    self.ips.reserve(ip)
            self.node_ports.update(p["nodePort"] for p in spec.get("ports") or [] if p.get("nodePort"))

    # ---- bootstrap ---------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the namespaces, default ServiceAccounts and ``kubernetes`` Service a cluster has."""
        for ns in SYSTEM_NAMESPACES:
            if self.store.get(NAMESPACE.key, "", ns) is None:
                self.create(NAMESPACE, None, {"metadata": {"name": ns}})
            elif self.store.get(SERVICE_ACCOUNT.key, ns, "default") is None:
                self.create(SERVICE_ACCOUNT, ns, {"metadata": {"name": "default"}})
        if self.store.get(SERVICE.key, "default", "kubernetes") is None:
            labels = {"component": "apiserver", "provider": "kubernetes"}
            self.create(SERVICE, "default", {
                "metadata": {"name": "kubernetes", "labels": labels},
                "spec": {
                    "clusterIP": str(self.cfg.service_cidr.network_address + 1),
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.cfg.api_port}],
                },
            })
        slices = self.registry.by_key("endpointslices.discovery.k8s.io")
        if self.store.get(slices.key, "default", "kubernetes") is None:
            self.create(slices, "default", {
                "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.cfg.host_ip], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": self.cfg.api_port, "protocol": "TCP"}],
            })

    # ---- reads -------------------------------------------------------------------------

    def get(self, rt: ResourceType, ns: str | None, name: str) -> Stored:
        stored = self.store.get(rt.key, (ns or "") if rt.namespaced else "", name)
        if stored is None:
            raise errors.not_found(rt.plural, name, group=rt.group)
        return stored

    def check_selectors(self, rt: ResourceType, fields: FieldSelector) -> None:
        bad = unsupported_fields(fields, rt.allowed_fields)
        if bad:
            raise BadRequest(f'field label not supported: {bad[0]} (supported for {rt.plural}: {", ".join(rt.allowed_fields)})')

    def list(self, rt: ResourceType, ns: str | None, *, labels: LabelSelector, fields: FieldSelector) -> tuple[list[Stored], int]:
        self.check_selectors(rt, fields)
        items = self.store.list(rt.key, ns if rt.namespaced else None)
        if not labels.empty or not fields.empty:
            items = [s for s in items if matches(s.obj, labels, fields)]
        return items, self.store.resource_version

    # ---- create ------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, ns: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a JSON object ({rt.kind}), not {type(body).__name__}")
        obj = copy.deepcopy(body)
        api_version = obj.get("apiVersion")
        if api_version and api_version != rt.group_version:
            raise BadRequest(f"the API version in the data ({api_version}) does not match the expected API version ({rt.group_version})")
        kind = obj.get("kind")
        if kind and kind != rt.kind:
            raise BadRequest(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind}) for {rt.path()}")
        obj["apiVersion"] = rt.group_version
        obj["kind"] = rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise BadRequest("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = ns or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        return obj

    def _require_namespace(self, rt: ResourceType, ns: str, name: str) -> None:
        if not rt.namespaced:
            return
        namespace = self.store.get(NAMESPACE.key, "", ns)
        if namespace is None:
            raise errors.not_found("namespaces", ns)
        if namespace.obj["metadata"].get("deletionTimestamp"):
            raise errors.namespace_terminating(rt.plural, name, ns, group=rt.group)

    def create(self, rt: ResourceType, ns: str | None, body: Any, *, dry_run: bool = False,
               field_validation: str = "Warn", warnings: list[str] | None = None) -> Stored:
        """``warnings`` (when given) receives what the client should be told (unknown fields)."""
        obj = self._check_body(rt, ns, body)
        meta = obj["metadata"]
        ns_key = meta.get("namespace", "")
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(16):
                name = str(meta["generateName"])[:58] + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
                if self.store.get(rt.key, ns_key, name) is None:
                    break
            meta["name"] = name
        name = meta.get("name") or ""
        self._require_namespace(rt, ns_key, name)
        if name and self.store.get(rt.key, ns_key, name) is not None:
            raise errors.already_exists(rt.plural, name, group=rt.group)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        self._admit(rt, obj, None, field_validation=field_validation, warnings=warnings)
        allocated = self._allocate_service(obj, None, dry_run=dry_run) if rt is SERVICE else []
        if dry_run:
            return Stored(obj, dumps(obj), 0)
        try:
            with self.store.batch():
                stored = self.store.put(rt.key, obj, event_type="ADDED")
                if rt is NAMESPACE:
                    self.create(SERVICE_ACCOUNT, name, {"metadata": {"name": "default"}})
        except BaseException:
            for ip in allocated:
                self.ips.release(ip)
            raise
        if rt is CRD:
            self._serve(stored.obj)
        return stored

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None, *, field_validation: str,
               warnings: list[str] | None) -> None:
        """Defaults, pruning and validation of a write (422 on a broken rule); leaves ``obj`` as it
        is to be stored (a custom resource at its storage version, a CRD with its status)."""
        name = obj["metadata"].get("name") or ""
        unknown = admission.apply_defaults(rt, obj)
        if unknown and field_validation == "Strict":
            raise self._invalid(rt, name, [{"reason": "FieldValueInvalid", "field": p, "message": "field not declared in schema"}
                                           for p in unknown])
        if unknown and field_validation == "Warn" and warnings is not None:
            warnings.extend(f'unknown field "{p}"' for p in unknown)
        causes = admission.validate(rt, obj)
        if rt is CRD and old is not None:
            causes += crds.immutable_causes(obj, old)
        if causes:
            raise self._invalid(rt, name, causes)
        if rt is CRD:
            obj["status"] = crds.status(obj, old_status=(old or {}).get("status"), now=now_rfc3339(),
                                        conflict=crds.conflict_of(obj, self.registry))
        obj["apiVersion"] = rt.storage_group_version

    @staticmethod
    def _invalid(rt: ResourceType, name: str, causes: list[dict[str, str]]) -> Invalid:
        return errors.invalid(rt.kind, name, causes, group=rt.group, qualified=rt.custom is not None)

    def _serve(self, crd: Obj) -> None:
        """Serve what an (updated) CRD defines from now on."""
        self.registry.set_custom(crd["metadata"]["name"], crds.served_types(crd))

    def _allocate_service(self, obj: Obj, old: Obj | None, *, dry_run: bool) -> list[str]:
        """Give a Service its ClusterIP and NodePorts; returns newly taken IPs (to undo on failure)."""
        spec = obj["spec"]
        old_spec = (old or {}).get("spec") or {}
        taken: list[str] = []
        if spec.get("type") == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        elif old is not None and old_spec.get("clusterIP"):
            requested = spec.get("clusterIP")
            if requested not in (None, "", old_spec["clusterIP"]):
                raise errors.invalid("Service", obj["metadata"]["name"], [invalid_cause("spec.clusterIPs[0]", requested, "may not change once set")])
            spec["clusterIP"] = old_spec["clusterIP"]
            spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]
        elif spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
        else:
            requested = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
            try:
                ip = self.ips.allocate(requested, dry_run=dry_run)
            except ValueError as exc:
                raise errors.invalid("Service", obj["metadata"]["name"], [invalid_cause("spec.clusterIPs", [requested] if requested else [], str(exc))]) from None
            if not dry_run:
                taken.append(ip)
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            old_ports = {p.get("port"): p.get("nodePort") for p in old_spec.get("ports") or []}
            for p in spec.get("ports") or []:
                if not p.get("nodePort"):
                    if old_ports.get(p.get("port")):
                        p["nodePort"] = old_ports[p["port"]]
                        continue
                    free = next((n for n in NODE_PORTS if n not in self.node_ports), None)
                    if free is None:
                        raise errors.invalid("Service", obj["metadata"]["name"], [invalid_cause("spec.ports", None, "no node ports left in range 30000-32767")])
                    p["nodePort"] = free
                if not dry_run:
                    self.node_ports.add(p["nodePort"])
        return taken

    def _release_service(self, obj: Obj) -> None:
        spec = obj.get("spec") or {}
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            self.ips.release(ip)
        for p in spec.get("ports") or []:
            self.node_ports.discard(p.get("nodePort"))

    # ---- update ------------------------------------------------------------------------

    def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, *, subresource: str | None = None,
               dry_run: bool = False, field_validation: str = "Warn", warnings: list[str] | None = None) -> Stored:
        existing = self.get(rt, ns, name)
        obj = self._check_body(rt, ns, body)
        body_name = obj["metadata"].get("name")
        if body_name and body_name != name:
            raise BadRequest(f"the name of the object ({body_name}) does not match the name on the URL ({name})")
        return self._update(rt, existing, obj, subresource=subresource, dry_run=dry_run,
                            field_validation=field_validation, warnings=warnings)

    def _update(self, rt: ResourceType, existing: Stored, new: Obj, *, subresource: str | None, dry_run: bool,
                field_validation: str = "Warn", warnings: list[str] | None = None) -> Stored:
        old = existing.obj
        name = old["metadata"]["name"]
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "") and str(rv) != str(existing.rv):
            raise errors.conflict(rt.plural, name, group=rt.group)
        if subresource == "status":
            candidate = json.loads(existing.raw)
            if "status" in new:
                candidate["status"] = new["status"]
            else:
                candidate.pop("status", None)
        elif subresource == "finalize":
            # like Kubernetes: /finalize changes spec.finalizers and nothing else
            candidate = json.loads(existing.raw)
            candidate.setdefault("spec", {})["finalizers"] = _spec_finalizers(new, name=name)
        else:
            candidate = new
            if rt.has_status:
                if "status" in old:
                    candidate["status"] = copy.deepcopy(old["status"])
                else:
                    candidate.pop("status", None)
        candidate["apiVersion"] = rt.group_version
        candidate["kind"] = rt.kind
        meta = candidate.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        if rt is NAMESPACE and subresource != "finalize":
            # like Kubernetes: only /finalize changes a namespace's spec.finalizers
            spec = candidate.setdefault("spec", {})
            if "finalizers" in (old.get("spec") or {}):
                spec["finalizers"] = copy.deepcopy(old["spec"]["finalizers"])
            else:
                spec.pop("finalizers", None)
        if old["metadata"].get("deletionTimestamp"):
            # like Kubernetes: no new finalizers once deletion has started
            meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f in (old["metadata"].get("finalizers") or [])]
            if not meta["finalizers"]:
                meta.pop("finalizers")
        self._admit(rt, candidate, old, field_validation=field_validation, warnings=warnings)
        if rt is SERVICE:
            self._allocate_service(candidate, old, dry_run=True)
        if _spec_of(candidate) != _spec_of(old):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = str(existing.rv)
        if candidate == old:
            return existing
        if dry_run:
            return Stored(candidate, dumps(candidate), existing.rv)
        if meta.get("deletionTimestamp") and not _held(rt, candidate):
            return self._remove(rt, existing)
        if rt is SERVICE:
            self._release_service(old)
            self._allocate_service(candidate, old, dry_run=False)
        stored = self.store.put(rt.key, candidate, event_type="MODIFIED")
        if rt is CRD:
            self._serve(stored.obj)
        return stored

    # ---- patch -------------------------------------------------------------------------

    def patch(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        *,
        patch_type: str,
        patch: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: list[str] | None = None,
    ) -> tuple[Stored, bool]:
        """Apply a patch; returns ``(stored, created)`` (only server-side apply creates)."""
        if patch_type == STRATEGIC_PATCH and rt.custom is not None:
            # as Kubernetes: custom resources have no patch strategies to merge lists by
            raise errors.UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types include: {JSON_PATCH}, "
                f"{MERGE_PATCH}, {APPLY_PATCH} (strategic merge patch is not supported for custom resources)")
        write = {"dry_run": dry_run, "field_validation": field_validation, "warnings": warnings}
        is_apply = patch_type.startswith("application/apply-patch")
        existing = self.store.get(rt.key, (ns or "") if rt.namespaced else "", name)
        if is_apply:
            if not isinstance(patch, dict):
                raise BadRequest("an applied configuration must be a YAML or JSON object")
            for field, want in (("apiVersion", rt.group_version), ("kind", rt.kind)):
                if not patch.get(field):
                    raise BadRequest(f"{field} must be set in an applied configuration (expected {want!r})")
            applied_name = (patch.get("metadata") or {}).get("name")
            if applied_name and applied_name != name:
                raise BadRequest(f"the name of the object ({applied_name}) does not match the name on the URL ({name})")
        if existing is None:
            if is_apply and subresource is None:
                body = copy.deepcopy(patch)
                body.setdefault("metadata", {})["name"] = name
                return self.create(rt, ns, body, **write), True
            raise errors.not_found(rt.plural, name, group=rt.group)
        current = json.loads(existing.raw)
        current["apiVersion"] = rt.group_version  # a custom resource may be stored at another version
        try:
            if patch_type == MERGE_PATCH:
                patched = merge_patch(current, patch)
            elif patch_type == JSON_PATCH:
                patched = json_patch(current, patch)
            elif patch_type == STRATEGIC_PATCH:
                if not isinstance(patch, dict):
                    raise PatchFormatError("a strategic merge patch must be a JSON object")
                patched = strategic_merge_patch(current, patch, kind=rt.kind)
            elif is_apply:
                patched = apply_patch(current, patch, kind=rt.kind)
            else:
                raise errors.UnsupportedMediaType(f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES[:4])}")
        except PatchFormatError as exc:
            raise BadRequest(str(exc)) from exc
        except PatchApplyError as exc:
            raise Invalid(str(exc), details={"name": name, "kind": rt.kind}) from exc
        if not isinstance(patched, dict):
            raise Invalid(f"the patched {rt.kind} is not an object", details={"name": name, "kind": rt.kind})
        obj = self._check_body(rt, ns, patched)
        if obj["metadata"].get("name") != name:
            raise BadRequest(f"the name of the object ({obj['metadata'].get('name')}) does not match the name on the URL ({name})")
        return self._update(rt, existing, obj, subresource=subresource, **write), False

    # ---- delete ------------------------------------------------------------------------

    def delete(self, rt: ResourceType, ns: str | None, name: str, *, options: DeleteOptions = DeleteOptions(), dry_run: bool = False) -> Stored:
        existing = self.get(rt, ns, name)
        meta = existing.obj["metadata"]
        if options.uid and options.uid != meta.get("uid"):
            raise errors.Conflict(
                f"Precondition failed: UID in precondition: {options.uid}, UID in object meta: {meta.get('uid')}",
                details={"name": name, "kind": rt.plural},
            )
        if options.resource_version and options.resource_version != str(existing.rv):
            raise errors.Conflict(
                f"Precondition failed: ResourceVersion in precondition: {options.resource_version}, ResourceVersion in object meta: {existing.rv}",
                details={"name": name, "kind": rt.plural},
            )
        if rt is NAMESPACE and name in SYSTEM_NAMESPACES:
            raise errors.Forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted', details={"name": name, "kind": "namespaces"})
        if dry_run:
            return existing
        if rt is NAMESPACE:
            return self._delete_namespace(existing)
        finalizers = list(meta.get("finalizers") or [])
        # Foreground/Orphan keep an owner only for the garbage collector (sandbox.controllers),
        # which judges the COLLECTED_OWNERS kinds; for any other kind nothing would release it
        waits = options.propagation in ("Foreground", "Orphan") and rt.key in COLLECTED_OWNERS and self._has_dependents(existing.obj)
        wanted = finalizers_after(finalizers, options.propagation, has_dependents=waits)
        if meta.get("deletionTimestamp") and wanted == finalizers:
            return existing
        if not wanted:
            return self._remove(rt, existing)
        obj = json.loads(existing.raw)
        obj["metadata"]["finalizers"] = wanted
        obj["metadata"].setdefault("deletionTimestamp", now_rfc3339())
        obj["metadata"].setdefault("deletionGracePeriodSeconds", 0)
        return self.store.put(rt.key, obj, event_type="MODIFIED")

    def _has_dependents(self, owner: Obj) -> bool:
        """Does any object in the owner's namespace name it (by uid) in its ownerReferences?"""
        uid = owner["metadata"].get("uid")
        ns = owner["metadata"].get("namespace", "")
        for other in self.registry.kinds():
            if other.namespaced:
                for s in self.store.list(other.key, ns):
                    if any(ref.get("uid") == uid for ref in s.obj["metadata"].get("ownerReferences") or []):
                        return True
        return False

    def _delete_namespace(self, existing: Stored) -> Stored:
        """The first DELETE marks the namespace Terminating (MODIFIED) and answers it, as Kubernetes
        does; the namespace controller empties it and removes its ``kubernetes`` finalizer. A
        namespace that no finalizer holds goes at once."""
        if not existing.obj["metadata"].get("deletionTimestamp"):
            obj = json.loads(existing.raw)
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj.setdefault("status", {})["phase"] = "Terminating"
            existing = self.store.put(NAMESPACE.key, obj, event_type="MODIFIED")
        if not _held(NAMESPACE, existing.obj):
            return self._remove(NAMESPACE, existing)
        return existing

    def _remove(self, rt: ResourceType, existing: Stored) -> Stored:
        meta = existing.obj["metadata"]
        with self.store.batch():
            if rt is NAMESPACE:
                # normally empty by now (the namespace controller finalizes only an empty
                # namespace); whoever removed the finalizers by hand leaves no orphans behind
                for other in self.registry.kinds():
                    if other.namespaced:
                        for s in self.store.list(other.key, meta["name"]):
                            self._remove(other, s)
            if rt is CRD:
                self._remove_custom_resources(existing.obj)
            deleted = self.store.delete(rt.key, meta.get("namespace", ""), meta["name"])
        if rt is SERVICE:
            self._release_service(existing.obj)
        if deleted is None:
            raise errors.not_found(rt.plural, meta["name"], group=rt.group)
        return deleted

    def _remove_custom_resources(self, crd: Obj) -> None:
        """A CRD goes: every object of its kind goes first (DELETED events), then its watches end
        and its kind is served no more."""
        spec = crd.get("spec") or {}
        key = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
        for s in self.store.list(key):
            self.store.delete(key, s.obj["metadata"].get("namespace", ""), s.obj["metadata"]["name"])
        self.registry.remove_custom(crd["metadata"]["name"])
        self.store.close_watchers(key)

    def delete_collection(
        self,
        rt: ResourceType,
        ns: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        options: DeleteOptions = DeleteOptions(),
        dry_run: bool = False,
    ) -> list[Stored]:
        items, _ = self.list(rt, ns, labels=labels, fields=fields)
        out = []
        for s in items:
            m = s.obj["metadata"]
            if rt is NAMESPACE and m["name"] in SYSTEM_NAMESPACES:
                continue
            try:
                out.append(self.delete(rt, m.get("namespace"), m["name"], options=options, dry_run=dry_run))
            except NotFound:
                continue
        return out

    # ---- scale -------------------------------------------------------------------------

    def get_scale(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        """The ``autoscaling/v1`` Scale view (``kubectl scale``) of a Deployment or ReplicaSet, or
        of a custom resource at the paths its CRD's ``subresources.scale`` names."""
        obj = self.get(rt, ns, name).obj
        meta = obj["metadata"]
        paths = rt.scale or ScalePaths()
        replicas = _first(paths.spec_replicas, obj)
        current = _first(paths.status_replicas, obj)
        if paths.label_selector is None:  # built-ins: the spec's selector object
            selector = str(label_selector_from_dict((obj.get("spec") or {}).get("selector") or {}))
        else:
            selector = str(_first(paths.label_selector, obj) or "") if paths.label_selector else ""
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta},
            "spec": {"replicas": replicas if isinstance(replicas, int) else (0 if rt.custom else 1)},
            "status": {"replicas": int(current) if isinstance(current, (int, float)) else 0, "selector": selector},
        }

    def update_scale(self, rt: ResourceType, ns: str | None, name: str, *, patch_type: str | None, body: Any, dry_run: bool = False) -> Obj:
        """Set replicas through the Scale subresource: a PUT (``patch_type`` None) or a PATCH of the Scale."""
        current = self.get_scale(rt, ns, name)
        try:
            if patch_type is None:
                scale = body
            elif patch_type == JSON_PATCH:
                scale = json_patch(current, body)
            elif patch_type in (MERGE_PATCH, STRATEGIC_PATCH) or patch_type.startswith("application/apply-patch"):
                scale = merge_patch(current, body)
            else:
                raise errors.UnsupportedMediaType(f"{patch_type} is not a patch type for the scale subresource")
        except PatchFormatError as exc:
            raise BadRequest(str(exc)) from exc
        except PatchApplyError as exc:
            raise Invalid(str(exc), details={"name": name, "kind": "Scale"}) from exc
        replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("Scale", name, [invalid_cause("spec.replicas", replicas, "must be greater than or equal to 0")], group="autoscaling")
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        existing = self.get(rt, ns, name)
        obj = json.loads(existing.raw)
        jsonpath.set_value(jsonpath.parse((rt.scale or ScalePaths()).spec_replicas), obj, replicas)
        obj["apiVersion"] = rt.group_version
        obj["metadata"]["resourceVersion"] = rv or str(existing.rv)
        self._update(rt, existing, obj, subresource=None, dry_run=dry_run)
        out = self.get_scale(rt, ns, name)
        out["spec"]["replicas"] = replicas
        return out

    # ---- tokens ------------------------------------------------------------------------

    def token_request(self, ns: str, name: str, body: Any) -> Obj:
        sa = self.get(SERVICE_ACCOUNT, ns, name)
        if not isinstance(body, dict):
            raise BadRequest("a TokenRequest body must be a JSON object")
        spec = body.get("spec") or {}
        audiences = spec.get("audiences") or list(self.issuer.api_audiences)
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            raise errors.invalid("TokenRequest", name, [invalid_cause("spec.audiences", audiences, "must be a list of non-empty strings")], group="authentication.k8s.io")
        seconds = spec.get("expirationSeconds") or 3600
        if not isinstance(seconds, int) or seconds < MIN_TOKEN_SECONDS or seconds > 2**32:
            raise errors.invalid("TokenRequest", name, [invalid_cause("spec.expirationSeconds", seconds, f"may not specify a duration less than {MIN_TOKEN_SECONDS} seconds or greater than 2^32 seconds")], group="authentication.k8s.io")
        pod = None
        ref = spec.get("boundObjectRef")
        if ref:
            if ref.get("kind") != "Pod":
                raise errors.invalid("TokenRequest", name, [invalid_cause("spec.boundObjectRef.kind", ref.get("kind"), "only Pod is supported by the sandbox API")], group="authentication.k8s.io")
            stored = self.get(POD, ns, str(ref.get("name", "")))
            uid = stored.obj["metadata"]["uid"]
            if ref.get("uid") and ref["uid"] != uid:
                raise errors.Conflict(f'the UID in the bound object reference ({ref["uid"]}) does not match the UID in record. The object might have been deleted and then recreated', details={"name": ref.get("name"), "kind": "pods"})
            pod_sa = (stored.obj.get("spec") or {}).get("serviceAccountName", "default")
            if pod_sa != name:
                raise BadRequest(f'cannot bind a token for serviceaccount "{name}" to pod "{ref.get("name")}", which uses serviceaccount "{pod_sa}"')
            pod = BoundPod(stored.obj["metadata"]["name"], uid)
        token, exp = self.issuer.issue(
            namespace=ns,
            service_account=name,
            service_account_uid=sa.obj["metadata"]["uid"],
            audiences=audiences,
            expiration_seconds=seconds,
            pod=pod,
        )
        out_spec = {"audiences": audiences, "expirationSeconds": seconds}
        if ref:
            out_spec["boundObjectRef"] = ref
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": now_rfc3339()},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": datetime.fromtimestamp(exp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def _check_claims(self, claims: TokenClaims) -> User:
        sa = self.store.get(SERVICE_ACCOUNT.key, claims.namespace, claims.service_account)
        if sa is None or sa.obj["metadata"]["uid"] != claims.service_account_uid:
            raise TokenInvalid(f'service account {claims.namespace}/{claims.service_account} has been deleted or recreated')
        extra: list[tuple[str, tuple[str, ...]]] = []
        if claims.pod is not None:
            pod = self.store.get(POD.key, claims.namespace, claims.pod.name)
            if pod is None or pod.obj["metadata"]["uid"] != claims.pod.uid:
                raise TokenInvalid(f"pod {claims.namespace}/{claims.pod.name} the token was bound to no longer exists")
            extra = [
                ("authentication.kubernetes.io/pod-name", (claims.pod.name,)),
                ("authentication.kubernetes.io/pod-uid", (claims.pod.uid,)),
            ]
        return User(
            claims.username,
            uid=claims.service_account_uid,
            groups=("system:serviceaccounts", f"system:serviceaccounts:{claims.namespace}", "system:authenticated"),
            extra=tuple(extra),
        )

    def token_review(self, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise BadRequest("a TokenReview body must be a JSON object")
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise errors.invalid("TokenReview", "", [{"reason": "FieldValueRequired", "message": "Required value: token is required", "field": "spec.token"}], group="authentication.k8s.io")
        audiences = spec.get("audiences") or None
        status: Obj
        try:
            if hmac.compare_digest(token.encode(), self._admin_token.encode()):
                user, auds = ADMIN, list(audiences or self.issuer.api_audiences)
            else:
                claims = self.issuer.verify(token, audiences=audiences)
                user, auds = self._check_claims(claims), list(claims.audiences)
            status = {"authenticated": True, "user": user.as_dict(), "audiences": auds}
        except TokenInvalid as exc:
            status = {"authenticated": False, "user": {}, "error": f"[invalid bearer token, {exc}]"}
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def authenticate(self, token: str) -> User:
        """The user behind a bearer token; raises ``Unauthorized``. The sandbox has no RBAC."""
        if token and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return ADMIN
        if looks_like_jwt(token):
            try:
                return self._check_claims(self.issuer.verify(token))
            except TokenInvalid:
                pass
        raise errors.Unauthorized("Unauthorized")


def _held(rt: ResourceType, obj: Obj) -> bool:
    """Does a finalizer keep this object (with a deletionTimestamp) from being removed?"""
    if (obj.get("metadata") or {}).get("finalizers"):
        return True
    return rt is NAMESPACE and bool((obj.get("spec") or {}).get("finalizers"))


def _spec_finalizers(body: Obj, *, name: str) -> list[str]:
    spec = body.get("spec") or {}
    finalizers = spec.get("finalizers") if isinstance(spec, dict) else None
    if finalizers is None:
        return []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) and f for f in finalizers):
        raise errors.invalid("Namespace", name, [invalid_cause("spec.finalizers", finalizers, "must be a list of finalizer names")])
    return list(dict.fromkeys(finalizers))


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _first(path: str, obj: Obj) -> Any:
    found = jsonpath.find(jsonpath.parse(path), obj)
    return found[0] if found else None


def matches(obj: Obj, labels: LabelSelector, fields: FieldSelector) -> bool:
    return labels.matches((obj.get("metadata") or {}).get("labels")) and fields.matches(obj)


__all__ = ["Resources", "User", "ADMIN", "matches", "now_rfc3339", "PATCH_TYPES"]
