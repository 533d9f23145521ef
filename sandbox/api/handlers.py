"""HTTP: routing, authentication, content negotiation and Status errors over :class:`Resources`.

One catch-all route parses Kubernetes paths (``/api/v1/namespaces/{ns}/{plural}/{name}/{sub}``,
``/apis/{group}/{version}/...``, legacy ``.../watch/...``) into a :class:`Target`; each verb
maps to one method of ``resources.Resources``; kinds are looked up in its registry (built-ins and
CRDs alike). Lists and gets answer JSON, a ``meta.k8s.io`` Table
(``Accept: ...;as=Table;v=v1;g=meta.k8s.io``) or PartialObjectMetadata, custom resources at the
version asked for; watches are handed to ``watch.serve_watch``. Writes take ``fieldValidation``
(Strict/Warn/Ignore) and answer unknown fields of custom resources with ``Warning`` headers. Every request but /version and the health checks needs a
bearer token; authenticated callers are authorized for everything (the sandbox has no RBAC).
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import yaml
from aiohttp import web

from . import crds, discovery, errors, protobuf, proxy
from .deletion import DeleteOptions, DeleteOptionsError, DeleteOptionsInvalid, parse_options
from .errors import ApiError, BadRequest, MethodNotAllowed, NotAcceptable, NotFound, UnsupportedMediaType
from .protobuf import ProtobufError
from .registry import ResourceType
from .resources import FIELD_VALIDATION, PATCH_TYPES, Resources
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import Stored, dumps
from .tables import partial_metadata, render_table
from .watch import WatchRequest, serve_watch

log = logging.getLogger("sandbox.api")

PUBLIC_PATHS = ("/version", "/healthz", "/readyz", "/livez")
MAX_BODY = 3 * 1024 * 1024
DEFAULT_WATCH_TIMEOUT = 1800.0
_TRUE = {"true", "1", "t", "yes", "y", "on"}
_FALSE = {"false", "0", "f", "no", "n", "off", ""}


def is_public(path: str) -> bool:
    """/version and the health checks answer without a token (as kube-apiserver's defaults allow)."""
    return path.rstrip("/") in PUBLIC_PATHS or path.startswith(tuple(p + "/" for p in PUBLIC_PATHS[1:]))


def parse_bool(value: str | None, *, param: str) -> bool:
    """Loose booleans, as Kubernetes clients send them: true/True/1, false/False/0."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise BadRequest(f"invalid boolean {value!r} for query parameter {param!r}; use true or false")


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    legacy_watch: bool = False


# ---- content negotiation ---------------------------------------------------------------------


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for part in accept.split(","):
        bits = [b.strip() for b in part.split(";")]
        if not bits[0]:
            continue
        params = {}
        for b in bits[1:]:
            k, _, v = b.partition("=")
            params[k.strip().lower()] = v.strip()
        out.append((bits[0].lower(), params))
    return out


def _is_json(media: str) -> bool:
    return media in ("application/json", "*/*", "application/*")


def negotiate(accept: str | None) -> str:
    """"json", "table" or "partial" for an object/list request."""
    if not accept:
        return "json"
    for media, params in _media_ranges(accept):
        if not _is_json(media):
            continue
        as_ = params.get("as")
        if as_ is None:
            return "json"
        if as_ == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return "table"
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList") and params.get("g") == "meta.k8s.io":
            return "partial"
    raise NotAcceptable(f"only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (asked for {accept!r})")


def negotiate_discovery(accept: str | None) -> str | None:
    """The aggregated discovery version asked for (v2 or v2beta1), or None for the legacy form."""
    for media, params in _media_ranges(accept or ""):
        if _is_json(media) and params.get("as") == "APIGroupDiscoveryList" and params.get("g") == "apidiscovery.k8s.io":
            if params.get("v") in ("v2", "v2beta1"):
                return params["v"]
        elif _is_json(media) and "as" not in params:
            return None
    return None


def json_response(obj: Any, *, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=dumps(obj), status=status, headers={"Content-Type": content_type})


def raw_response(raw: bytes, *, status: int = 200, warnings: list[str] = ()) -> web.Response:
    resp = web.Response(body=raw, status=status, headers={"Content-Type": "application/json"})
    for text in dict.fromkeys(warnings):
        # RFC 7234 warn-code 299, as kube-apiserver sends them (kubectl prints "Warning: ...")
        resp.headers.add("Warning", "299 - " + json.dumps(text))
    return resp


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.status(), status=exc.code)


# ---- bodies ----------------------------------------------------------------------------------


def parse_json(raw: bytes, *, what: str = "request body") -> Any:
    if not raw.strip():
        raise BadRequest(f"the {what} is empty; send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the {what} is not valid UTF-8: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {exc.pos})") from exc


def parse_yaml(raw: bytes, *, what: str = "request body") -> Any:
    if not raw.strip():
        raise BadRequest(f"the {what} is empty; send a YAML or JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BadRequest(f"the {what} is neither valid JSON nor valid YAML: {exc}") from exc


def _content_type(request: web.Request) -> str:
    return (request.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()


async def read_object(request: web.Request) -> Any:
    ctype = _content_type(request)
    raw = await request.read()
    if ctype in ("application/json", "*/*", "text/plain", ""):
        return parse_json(raw)
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        return parse_yaml(raw)
    if ctype == protobuf.CONTENT_TYPE:
        try:
            return protobuf.decode_object(raw)
        except ProtobufError as exc:
            raise UnsupportedMediaType(
                f"{exc}; send JSON instead (e.g. kubectl create ... --dry-run=client -o yaml | kubectl apply -f -)"
            ) from exc
    raise UnsupportedMediaType(f"the body of the request was in an unknown format ({ctype}); send application/json")


async def read_delete_options(request: web.Request) -> DeleteOptions:
    """DeleteOptions from the body (JSON or protobuf), or from the query when there is no body."""
    raw = await request.read()
    body = await read_object(request) if raw.strip() else None
    query = {key: request.query.getall(key) for key in set(request.query.keys())}
    try:
        return parse_options(body, query)
    except DeleteOptionsInvalid as exc:
        raise errors.invalid("DeleteOptions", "", [exc.cause], group="meta.k8s.io") from exc
    except DeleteOptionsError as exc:
        raise BadRequest(str(exc)) from exc


# ---- continue tokens -------------------------------------------------------------------------


def encode_continue(rv: int, last: tuple[str, str]) -> str:
    doc = {"rv": rv, "start": f"{last[0]}/{last[1]}"}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def decode_continue(token: str) -> tuple[str, str]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode() + b"=="))
        ns, _, name = doc["start"].partition("/")
        return ns, name
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadRequest(f"invalid continue token {token!r}; start the list again without continue") from exc


# ---- the application -------------------------------------------------------------------------


class Handlers:
    def __init__(self, resources: Resources, *, bookmark_interval: float = 10.0, watch_timeout: float = DEFAULT_WATCH_TIMEOUT) -> None:
        self.resources = resources
        self.registry = resources.registry
        self.store = resources.store
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.open_watches = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.monotonic()
        user = "-"
        try:
            if not is_public(request.path):
                auth = request.headers.get("Authorization", "")
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise errors.Unauthorized("Unauthorized: send 'Authorization: Bearer <token>' (see the kubeconfig written by the sandbox)")
                user = self.resources.authenticate(token.strip()).username
            resp = await handler(request)
        except ApiError as exc:
            resp = error_response(exc)
            if exc.code >= 500:
                log.warning("%s %s -> %d %s", request.method, request.path_qs, exc.code, exc.message)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure becomes a Status
            log.exception("%s %s failed", request.method, request.path_qs)
            resp = error_response(errors.InternalError(f"internal error: {exc}"))
        log.debug("%s %s %s %d %.1fms", user, request.method, request.path_qs, resp.status, (time.monotonic() - started) * 1000)
        return resp

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if not parts:
            return json_response({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]})
        head = parts[0]
        if head in ("healthz", "readyz", "livez"):
            return web.Response(text="ok", content_type="text/plain")
        if head == "version" and len(parts) == 1:
            return json_response(discovery.version_info())
        if head == "openapi":
            return self._openapi(request, parts)
        if head == "api":
            if len(parts) == 1:
                return self._discovery(request, core=True)
            if parts[1] != "v1":
                raise NotFound("the server could not find the requested resource")
            if len(parts) == 2:
                return json_response(discovery.api_resource_list(self.registry, "", "v1"))
            return await self._resource(request, "", "v1", parts[2:])
        if head == "apis":
            if len(parts) == 1:
                return self._discovery(request, core=False)
            if len(parts) == 2:
                doc = discovery.api_group(self.registry, parts[1])
                if doc is None:
                    raise NotFound("the server could not find the requested resource")
                return json_response(doc)
            if len(parts) == 3:
                doc = discovery.api_resource_list(self.registry, parts[1], parts[2])
                if doc is None:
                    raise NotFound("the server could not find the requested resource")
                return json_response(doc)
            return await self._resource(request, parts[1], parts[2], parts[3:])
        raise NotFound("the server could not find the requested resource")

    # ---- discovery -----------------------------------------------------------------------

    def _discovery(self, request: web.Request, *, core: bool) -> web.Response:
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        version = negotiate_discovery(request.headers.get("Accept"))
        if version == "v2":
            return json_response(discovery.aggregated_discovery(self.registry, core=core), content_type=discovery.AGGREGATED_V2)
        if version == "v2beta1":
            doc = discovery.aggregated_discovery(self.registry, core=core, api_version="apidiscovery.k8s.io/v2beta1")
            return json_response(doc, content_type=discovery.AGGREGATED_V2BETA1)
        if core:
            return json_response(discovery.api_versions(request.host))
        return json_response(discovery.api_group_list(self.registry))

    def _openapi(self, request: web.Request, parts: list[str]) -> web.Response:
        if len(parts) == 2 and parts[1] == "v2":
            return web.Response(body=b"", status=200, content_type="application/json")
        if len(parts) >= 2 and parts[1] == "v3":
            if len(parts) == 2:
                return json_response(discovery.openapi_v3_root(self.registry))
            rest = parts[2:]
            doc = None
            if rest[0] == "api" and len(rest) == 2:
                doc = discovery.openapi_v3_document(self.registry, "", rest[1])
            elif rest[0] == "apis" and len(rest) == 3:
                doc = discovery.openapi_v3_document(self.registry, rest[1], rest[2])
            if doc is not None:
                return json_response(doc)
        raise NotFound("the server could not find the requested resource")

    # ---- resources -----------------------------------------------------------------------

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        legacy_watch = False
        if rest and rest[0] == "watch":
            legacy_watch, rest = True, rest[1:]
        ns: str | None = None
        if rest and rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize") and not group):
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise NotFound("the server could not find the requested resource")
        rt = self.registry.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise NotFound("the server could not find the requested resource")
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if ns is not None and not rt.namespaced:
            raise NotFound("the server could not find the requested resource")
        if ns is None and rt.namespaced and name is not None:
            raise NotFound("the server could not find the requested resource")
        if sub is not None and sub not in rt.subresources:
            raise NotFound("the server could not find the requested resource")
        return Target(rt, ns, name, sub, legacy_watch)

    async def _resource(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        if not group and len(rest) >= 5 and rest[0] == "namespaces" and rest[2] == "pods" and rest[4] == "proxy":
            ns, ref = rest[1], rest[3]
            pod = self.resources.get(self.registry.lookup("", "v1", "pods"), ns, proxy.parse_target(ref)[0]).obj
            return await proxy.forward(request, pod, namespace=ns, ref=ref, path=rest[5:])
        t = self._target(group, version, rest)
        q = request.query
        method = request.method
        dry_run = "All" in q.getall("dryRun", [])
        validation = q.get("fieldValidation") or "Warn"
        if validation not in FIELD_VALIDATION:
            raise BadRequest(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not {validation!r}')
        warnings: list[str] = []
        write = {"dry_run": dry_run, "field_validation": validation, "warnings": warnings}
        rt = t.rt
        if rt.verbs == ("create",):
            if method != "POST" or t.name is not None:
                raise MethodNotAllowed(f"{rt.plural}.{rt.group} only supports create (POST)")
            body = await read_object(request)
            return json_response(self.resources.token_review(body), status=201)
        if t.subresource == "token":
            if method != "POST":
                raise MethodNotAllowed("the token subresource only supports POST (TokenRequest)")
            body = await read_object(request)
            return json_response(self.resources.token_request(t.namespace or "", t.name or "", body), status=201)
        if t.subresource == "scale":
            return await self._scale(request, t, dry_run=dry_run)
        if t.subresource == "finalize" and method != "PUT":
            raise MethodNotAllowed(f"{method} is not allowed on {rt.plural}/finalize; PUT the {rt.kind} with the spec.finalizers to keep")
        if t.name is None:
            if method == "GET":
                if t.legacy_watch or parse_bool(q.get("watch"), param="watch"):
                    return await self._watch(request, t)
                return self._list(request, t)
            if method == "POST":
                body = await read_object(request)
                stored = self.resources.create(rt, t.namespace, body, **write)
                return raw_response(self._out(rt, stored), status=201, warnings=warnings)
            if method == "DELETE":
                labels, fields = self._selectors(request)
                options = await read_delete_options(request)
                deleted = self.resources.delete_collection(rt, t.namespace, labels=labels, fields=fields, options=options,
                                                           dry_run=dry_run or options.dry_run)
                return self._list_body(rt, deleted, self.store.resource_version)
            raise MethodNotAllowed(f"{method} is not allowed on a collection of {rt.plural}")
        if method == "GET":
            if t.legacy_watch or parse_bool(q.get("watch"), param="watch"):
                return await self._watch(request, t, name=t.name)
            stored = self.resources.get(rt, t.namespace, t.name)
            return self._one(request, rt, stored)
        if method == "PUT":
            body = await read_object(request)
            stored = self.resources.update(rt, t.namespace, t.name, body, subresource=t.subresource, **write)
            return raw_response(self._out(rt, stored), warnings=warnings)
        if method == "PATCH":
            ptype = _content_type(request)
            if ptype not in PATCH_TYPES:
                raise UnsupportedMediaType(
                    f"the body of the request was in an unknown format ({ptype}) - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, "
                    "application/strategic-merge-patch+json"
                )
            raw = await request.read()
            patch = parse_yaml(raw, what="patch") if ptype.startswith("application/apply-patch") else parse_json(raw, what="patch")
            stored, created = self.resources.patch(rt, t.namespace, t.name, patch_type=ptype, patch=patch, subresource=t.subresource, **write)
            return raw_response(self._out(rt, stored), status=201 if created else 200, warnings=warnings)
        if method == "DELETE":
            if t.subresource:
                raise MethodNotAllowed(f"DELETE is not allowed on {rt.plural}/{t.subresource}")
            options = await read_delete_options(request)
            stored = self.resources.delete(rt, t.namespace, t.name, options=options, dry_run=dry_run or options.dry_run)
            return raw_response(self._out(rt, stored))
        raise MethodNotAllowed(f"{method} is not allowed on {rt.plural}")

    async def _scale(self, request: web.Request, t: Target, *, dry_run: bool) -> web.Response:
        name = t.name or ""
        if request.method == "GET":
            return json_response(self.resources.get_scale(t.rt, t.namespace, name))
        if request.method == "PUT":
            body = await read_object(request)
            return json_response(self.resources.update_scale(t.rt, t.namespace, name, patch_type=None, body=body, dry_run=dry_run))
        if request.method == "PATCH":
            ptype = _content_type(request)
            raw = await request.read()
            patch = parse_yaml(raw, what="patch") if ptype.startswith("application/apply-patch") else parse_json(raw, what="patch")
            return json_response(self.resources.update_scale(t.rt, t.namespace, name, patch_type=ptype, body=patch, dry_run=dry_run))
        raise MethodNotAllowed(f"{request.method} is not allowed on {t.rt.plural}/scale")

    def _selectors(self, request: web.Request, *, name: str | None = None) -> tuple[Any, Any]:
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields_text = request.query.get("fieldSelector")
            if name is not None:
                fields_text = f"metadata.name={name}" + (f",{fields_text}" if fields_text else "")
            fields = parse_field_selector(fields_text)
        except SelectorError as exc:
            raise BadRequest(str(exc)) from exc
        return labels, fields

    @staticmethod
    def _out(rt: ResourceType, stored: Stored) -> bytes:
        """An object as ``rt``'s version reads it (custom resources are stored at one version)."""
        return crds.as_served(rt, stored).raw

    def _one(self, request: web.Request, rt: ResourceType, stored: Stored) -> web.Response:
        stored = crds.as_served(rt, stored)
        mode = negotiate(request.headers.get("Accept"))
        if mode == "table":
            include = request.query.get("includeObject", "Metadata")
            return json_response(render_table(rt.columns, [stored.obj], resource_version=str(stored.rv), include_object=include))
        if mode == "partial":
            return json_response(partial_metadata(stored.obj))
        return raw_response(stored.raw)

    def _list_body(self, rt: ResourceType, items: list[Stored], rv: int, *, cont: str = "", remaining: int | None = None) -> web.Response:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        head = b'{"kind":"' + rt.list_kind.encode() + b'","apiVersion":"' + rt.group_version.encode() + b'","metadata":' + dumps(meta) + b',"items":['
        return raw_response(head + b",".join(self._out(rt, s) for s in items) + b"]}")

    def _list(self, request: web.Request, t: Target) -> web.Response:
        labels, fields = self._selectors(request)
        items, rv = self.resources.list(t.rt, t.namespace, labels=labels, fields=fields)
        cont = request.query.get("continue")
        if cont:
            start = decode_continue(cont)
            items = [s for s in items if (s.obj["metadata"].get("namespace", ""), s.obj["metadata"]["name"]) > start]
        next_token, remaining = "", None
        limit_text = request.query.get("limit")
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                raise BadRequest(f"invalid limit {limit_text!r}: must be a non-negative integer") from None
            if 0 < limit < len(items):
                remaining = len(items) - limit
                items = items[:limit]
                last = items[-1].obj["metadata"]
                next_token = encode_continue(rv, (last.get("namespace", ""), last["name"]))
        mode = negotiate(request.headers.get("Accept"))
        if mode == "table":
            include = request.query.get("includeObject", "Metadata")
            table = render_table(t.rt.columns, [crds.as_served(t.rt, s).obj for s in items], resource_version=str(rv), include_object=include)
            if next_token:
                table["metadata"]["continue"] = next_token
                table["metadata"]["remainingItemCount"] = remaining
            return json_response(table)
        if mode == "partial":
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if next_token:
                meta["continue"] = next_token
            return json_response({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": [partial_metadata(s.obj) for s in items]})
        return self._list_body(t.rt, items, rv, cont=next_token, remaining=remaining)

    async def _watch(self, request: web.Request, t: Target, *, name: str | None = None) -> web.StreamResponse:
        q = request.query
        labels, fields = self._selectors(request, name=name)
        self.resources.check_selectors(t.rt, fields)
        mode = negotiate(request.headers.get("Accept"))
        timeout = self.watch_timeout
        if q.get("timeoutSeconds"):
            try:
                timeout = max(0.0, float(q["timeoutSeconds"]))
            except ValueError:
                raise BadRequest(f"invalid timeoutSeconds {q['timeoutSeconds']!r}: must be a number of seconds") from None
        req = WatchRequest(
            rt=t.rt,
            namespace=t.namespace,
            labels=labels,
            fields=fields,
            resource_version=q.get("resourceVersion", ""),
            timeout=timeout,
            bookmarks=parse_bool(q.get("allowWatchBookmarks"), param="allowWatchBookmarks"),
            send_initial_events=parse_bool(q.get("sendInitialEvents"), param="sendInitialEvents"),
            table=mode == "table",
            include_object=q.get("includeObject", "Metadata"),
        )
        self.open_watches += 1

        def closed() -> None:
            self.open_watches -= 1

        return await serve_watch(request, req, store=self.store, bookmark_interval=self.bookmark_interval, on_close=closed)
