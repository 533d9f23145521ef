"""Watch streams: one compact JSON event per line over a chunked 200 response.

- subscribe first, then replay (synthetic ADDED for ``resourceVersion`` "" / "0", else the history
  after the requested version), so nothing falls between the two;
- selectors are applied to both the old and the new object, so an object that stops matching
  is delivered as DELETED and one that starts matching as ADDED, as Kubernetes does;
- BOOKMARK events when asked (right after catch-up, then every ``bookmark_interval``);
- too old a version → one ERROR event carrying a 410 ``Expired`` Status, then the stream ends;
- the stream ends at ``timeoutSeconds``, at server shutdown, or when the client goes away.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from . import crds
from .registry import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import Event, Store, Stored, TooOld, Watcher, dumps
from .tables import render_table

log = logging.getLogger(__name__)
IDLE_CHECK = 5.0
"""seconds between checks that an idle watch's client is still connected"""


@dataclass(frozen=True)
class WatchRequest:
    rt: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str
    timeout: float
    bookmarks: bool
    send_initial_events: bool
    table: bool
    include_object: str


def _matches(obj: dict[str, Any] | None, req: WatchRequest) -> bool:
    if obj is None:
        return False
    return req.labels.matches((obj.get("metadata") or {}).get("labels")) and req.fields.matches(obj)


def translate(event: Event, req: WatchRequest) -> str | None:
    """The event type this watcher sees for ``event`` (None: not for this watcher)."""
    if event.type == "DELETED":
        return "DELETED" if _matches(event.obj, req) else None
    now_in = _matches(event.obj, req)
    was_in = event.type == "MODIFIED" and _matches(event.prev, req)
    if now_in and was_in:
        return "MODIFIED"
    if now_in:
        return "ADDED"
    if was_in:
        return "DELETED"
    return None


class _Encoder:
    def __init__(self, req: WatchRequest) -> None:
        self.req = req
        self.headers_sent = False

    def line(self, etype: str, obj: dict[str, Any], raw: bytes) -> bytes:
        served = crds.as_served(self.req.rt, Stored(obj, raw, 0))
        obj, raw = served.obj, served.raw
        if not self.req.table:
            return b'{"type":"' + etype.encode() + b'","object":' + raw + b"}\n"
        columns = self.req.rt.columns
        table = render_table(columns, [obj], resource_version=obj["metadata"].get("resourceVersion", ""), include_object=self.req.include_object)
        if self.headers_sent:
            table["columnDefinitions"] = []
        self.headers_sent = True
        return dumps({"type": etype, "object": table}) + b"\n"

    def bookmark(self, rv: int, *, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return dumps({"type": "BOOKMARK", "object": {"kind": self.req.rt.kind, "apiVersion": self.req.rt.group_version, "metadata": meta}}) + b"\n"


def expired_status(requested: int, oldest: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {requested} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


async def serve_watch(
    request: web.Request,
    req: WatchRequest,
    *,
    store: Store,
    bookmark_interval: float,
    on_close: Callable[[], None] | None = None,
) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
    resp.enable_chunked_encoding()
    watcher = store.subscribe(req.rt.key, req.namespace if req.rt.namespaced else None)
    try:
        await resp.prepare(request)
        await _stream(request, resp, watcher, req, store=store, bookmark_interval=bookmark_interval)
    except ConnectionError:
        log.debug("watch client on %s went away", req.rt.key)
    finally:
        store.unsubscribe(watcher)
        if on_close is not None:
            on_close()
    return resp


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    watcher: Watcher,
    req: WatchRequest,
    *,
    store: Store,
    bookmark_interval: float,
) -> None:
    enc = _Encoder(req)
    deadline = time.monotonic() + req.timeout
    rv_text = req.resource_version
    initial: list[bytes] = []
    if rv_text in ("", "0") or req.send_initial_events:
        for s in store.list(req.rt.key, req.namespace if req.rt.namespaced else None):
            if _matches(s.obj, req):
                initial.append(enc.line("ADDED", s.obj, s.raw))
        caught_up = store.resource_version
    else:
        try:
            requested = int(rv_text)
        except ValueError:
            initial.append(dumps({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"invalid resource version {rv_text!r}: it must be an integer", "reason": "BadRequest", "code": 400,
            }}) + b"\n")
            await resp.write(b"".join(initial))
            return
        try:
            for ev in store.events_since(requested, req.rt.key, req.namespace if req.rt.namespaced else None):
                etype = translate(ev, req)
                if etype:
                    initial.append(enc.line(etype, ev.obj, ev.raw))
        except TooOld as exc:
            await resp.write(dumps({"type": "ERROR", "object": expired_status(exc.requested, exc.oldest)}) + b"\n")
            return
        caught_up = store.resource_version
    # events already replayed may also sit in the queue (subscribed first): skip those
    replayed_up_to = caught_up
    if req.send_initial_events and req.bookmarks:
        initial.append(enc.bookmark(caught_up, initial_end=True))
    elif req.bookmarks:
        initial.append(enc.bookmark(caught_up))
    if initial:
        await resp.write(b"".join(initial))
    next_bookmark = time.monotonic() + bookmark_interval
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        wait = min(deadline - now, IDLE_CHECK, max(0.0, next_bookmark - now) if req.bookmarks else IDLE_CHECK)
        try:
            first = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
        except asyncio.TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if req.bookmarks and time.monotonic() >= next_bookmark:
                await resp.write(enc.bookmark(store.resource_version))
                next_bookmark = time.monotonic() + bookmark_interval
            continue
        batch = [first]
        while not watcher.queue.empty():
            batch.append(watcher.queue.get_nowait())
        out: list[bytes] = []
        ended = False
        for ev in batch:
            if ev is None:
                ended = True
                break
            if ev.rv <= replayed_up_to:
                continue
            etype = translate(ev, req)
            if etype:
                out.append(enc.line(etype, ev.obj, ev.raw))
        if out:
            await resp.write(b"".join(out))
        if ended or watcher.overflowed:
            if watcher.overflowed:
                log.warning("ending a watch on %s that fell %d events behind; the client will re-watch", req.rt.key, len(batch))
            return
