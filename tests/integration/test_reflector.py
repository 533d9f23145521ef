"""The shared Reflector against the real sandbox API: events, resume, and a relist after 410."""
import threading
import time

import pytest
from kubernetes import client

from node_agent.discovery.reflector import Reflector
from sandbox.api.process import ApiProcess
from sandbox.config import SandboxConfig
from sandbox.kube import api_client


def wait_for(what, fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def api(tmp_path):
    cfg = SandboxConfig(name="refl", index=1, base_dir=tmp_path)
    proc = ApiProcess(cfg).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_reflector_sees_changes_and_relists_after_the_api_restarts(api):
    core = client.CoreV1Api(api_client(api.cfg))
    events: list[tuple[str, str]] = []
    stop = threading.Event()
    r = Reflector(name="namespaces", list_fn=core.list_namespace,
                  on_event=lambda t, o: events.append((t, o["metadata"]["name"])), max_backoff=0.5)
    r.start(stop)
    try:
        assert r.synced.wait(10)
        assert ("ADDED", "default") in events and ("", "default") in r.store
        assert r.store[("", "default")]["kind"] == "Namespace", "list items carry their kind"

        core.create_namespace({"metadata": {"name": "shop"}})
        core.patch_namespace("shop", {"metadata": {"labels": {"ambit.dev/dataplane-mode": "ambient"}}},
                             _content_type="application/merge-patch+json")
        wait_for("the label", lambda: "ambit.dev/dataplane-mode" in
                 (r.store.get(("", "shop"), {}).get("metadata", {}).get("labels") or {}))
        assert ("ADDED", "shop") in events and ("MODIFIED", "shop") in events

        # a restarted API has no watch history: resuming from our version gets 410 -> relist
        relists = r.relists
        api.stop()
        api.start()
        core.create_namespace({"metadata": {"name": "after-restart"}})
        wait_for("the namespace created after the restart", lambda: ("", "after-restart") in r.store)
        assert r.relists > relists
        core.delete_namespace("shop")
        # no namespace controller runs here: finish the deletion as it would
        core.replace_namespace_finalize("shop", {"metadata": {"name": "shop"}, "spec": {"finalizers": []}})
        wait_for("the deletion", lambda: ("", "shop") not in r.store)
        assert ("DELETED", "shop") in events
    finally:
        stop.set()
