"""List then watch one kind of Kubernetes object, keeping a local store of raw JSON dicts.

The protocol of client-go's Reflector, with the official Python client:
1. list (``_preload_content=False``: raw JSON, no model objects), replace the store, and emit
   the differences as ADDED/MODIFIED/DELETED so consumers never miss a change across relists;
2. watch from the list's resourceVersion with bookmarks, applying each event to the store;
3. on 410 Gone (an ``ERROR`` event with code 410, or ``ApiException(410)``) relist;
4. on any other failure, or a watch that stays silent past ``silence_timeout``, back off
   exponentially (capped) and start over.

``synced`` is set after the first complete list; readiness should wait for it.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Key = tuple[str, str]
EventHandler = Callable[[str, dict], None]


def object_key(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class _Gone(Exception):
    """the watch's resourceVersion is too old: relist"""


class Reflector:
    def __init__(
        self,
        *,
        name: str,
        list_fn: Callable[..., Any],
        list_kwargs: dict | None = None,
        on_event: EventHandler | None = None,
        silence_timeout: float = 300.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._list_kwargs = dict(list_kwargs or {})
        self._on_event = on_event
        self._silence_timeout = silence_timeout
        self._max_backoff = max_backoff
        self.store: dict[Key, dict] = {}
        self.synced = threading.Event()
        self.resource_version: str = ""
        self.relists = 0

    # ---- public -----------------------------------------------------------------------
    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name=f"reflector-{self.name}", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                self._list()
                backoff = 0.2
                while not stop.is_set():
                    self._watch(stop)
            except _Gone:
                log.info("%s: resourceVersion %s expired; relisting", self.name, self.resource_version)
                continue
            except Exception as exc:  # network errors, API restarts: keep the last store, retry
                if stop.is_set():
                    return
                log.warning("%s: list/watch failed (%s); retrying in %.1fs", self.name, _describe(exc), backoff)
                stop.wait(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, self._max_backoff)

    # ---- internals --------------------------------------------------------------------
    def _list(self) -> None:
        resp = self._list_fn(**self._list_kwargs, _preload_content=False)
        body = json.loads(resp.data)
        items = body.get("items") or []
        kind = (body.get("kind") or "").removesuffix("List")
        api_version = body.get("apiVersion")
        fresh: dict[Key, dict] = {}
        for item in items:
            # list items carry no kind/apiVersion; give them the list's so consumers see whole objects
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            fresh[object_key(item)] = item
        old = self.store
        self.store = fresh
        self.resource_version = body.get("metadata", {}).get("resourceVersion", "")
        self.relists += 1
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._emit("ADDED", obj)
            elif _rv(prev) != _rv(obj):
                self._emit("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        self.synced.set()

    def _watch(self, stop: threading.Event) -> None:
        w = k8s_watch.Watch()
        kwargs = dict(self._list_kwargs)
        kwargs.update(
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=int(self._silence_timeout),
            _request_timeout=(10, self._silence_timeout + 30),
            deserialize=False,
        )
        # The client retries a 410 once by itself and then raises; treat both forms as "relist".
        try:
            for event in w.stream(self._list_fn, **kwargs):
                if stop.is_set():
                    w.stop()
                    return
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                rv = _rv(obj)
                if rv:
                    self.resource_version = rv
                if etype == "BOOKMARK":
                    continue
                key = object_key(obj)
                if etype == "DELETED":
                    self.store.pop(key, None)
                else:
                    self.store[key] = obj
                self._emit(etype, obj)
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise

    def _emit(self, etype: str, obj: dict) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(etype, obj)
        except Exception:
            log.exception("%s: event handler failed on %s %s", self.name, etype, object_key(obj))


def _rv(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def wait_synced(reflectors: list[Reflector], *, timeout: float) -> bool:
    """True once every reflector has completed its first list, False on timeout."""
    deadline = time.monotonic() + timeout
    for r in reflectors:
        if not r.synced.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True
