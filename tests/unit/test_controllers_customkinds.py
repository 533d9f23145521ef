"""The controller manager's CRD kinds (Gateway): listed and watched through the custom-objects API,
empty (not failing) while their CRD is not installed, so readiness never waits for it."""
from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes.client.exceptions import ApiException

from node_agent.discovery.reflector import Reflector
from sandbox.controllers import manager
from sandbox.controllers.objects import CUSTOM_KINDS


class FakeCustomObjects:
    """``list_cluster_custom_object`` of a cluster whose Gateway CRD appears after ``served_after`` calls."""

    calls: list[dict] = []
    served_after = 0

    def __init__(self, api) -> None:
        pass

    def list_cluster_custom_object(self, group, version, plural, **kwargs):
        FakeCustomObjects.calls.append({"path": f"{group}/{version}/{plural}", **kwargs})
        if len(FakeCustomObjects.calls) <= FakeCustomObjects.served_after:
            raise ApiException(status=404, reason="Not Found")
        if kwargs.get("watch"):
            raise ApiException(status=500, reason="stop here")
        return Answer({"kind": "GatewayList", "metadata": {"resourceVersion": "9"},
                       "items": [{"metadata": {"name": "waypoint", "namespace": "shop", "resourceVersion": "9"}}]})


class Answer:
    status = 200

    def __init__(self, body: dict) -> None:
        self.data = json.dumps(body).encode()


@pytest.fixture
def fake(monkeypatch):
    FakeCustomObjects.calls = []
    monkeypatch.setattr(manager.k8s, "CustomObjectsApi", FakeCustomObjects)
    return FakeCustomObjects


def test_an_absent_crd_lists_as_empty_and_its_watch_ends_quietly(fake):
    fake.served_after = 10
    list_fn = manager.custom_list(object(), "Gateway", CUSTOM_KINDS["Gateway"], retry=0)
    listed = list_fn(_preload_content=False)
    assert json.loads(listed.data) == {"kind": "GatewayList", "items": [], "metadata": {"resourceVersion": ""}}
    watched = list_fn(watch=True, _preload_content=False)
    assert list(watched.stream()) == []
    assert fake.calls[0]["path"] == "gateway.networking.k8s.io/v1/gateways"


def test_the_reflector_is_synced_without_the_crd_and_finds_the_kind_once_it_is_there(fake):
    fake.served_after = 2  # the first list and the first watch find no CRD
    reflector = Reflector(name="Gateway", list_fn=manager.custom_list(object(), "Gateway", CUSTOM_KINDS["Gateway"], retry=0),
                          max_backoff=0.01)
    stop = threading.Event()
    thread = reflector.start(stop)
    try:
        assert reflector.synced.wait(5), "readiness does not wait for an absent CRD"
        deadline = time.monotonic() + 5
        while not reflector.store and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(reflector.store) == [("shop", "waypoint")]
    finally:
        stop.set()
        thread.join(5)
