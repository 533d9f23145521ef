"""The sandbox API's store: persistence across reopen, one growing resourceVersion, the watch window."""
from __future__ import annotations

import pytest

from sandbox.api.store import Store, TooOld


def obj(name: str, ns: str = "default", **data: str) -> dict:
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}, "data": data}


def test_objects_and_version_survive_reopen(tmp_path):
    db = tmp_path / "api.db"
    s = Store(db)
    s.put("configmaps", obj("a", x="1"), event_type="ADDED")
    s.put("configmaps", obj("b"), event_type="ADDED")
    s.put("configmaps", obj("a", x="2"), event_type="MODIFIED")
    s.delete("configmaps", "default", "b")
    assert s.resource_version == 4
    s.close()
    again = Store(db)
    assert again.resource_version == 4
    assert [x.obj["metadata"]["name"] for x in again.list("configmaps")] == ["a"]
    assert again.get("configmaps", "default", "a").obj["data"] == {"x": "2"}
    assert again.get("configmaps", "default", "a").rv == 3
    assert again.put("configmaps", obj("c"), event_type="ADDED").rv == 5
    with pytest.raises(TooOld):
        list(again.events_since(3, "configmaps", None))
    assert [e.name for e in again.events_since(4, "configmaps", None)] == ["c"]
    again.close()


def test_batch_commits_once_and_keeps_memory_and_disk_equal(tmp_path):
    s = Store(tmp_path / "api.db")
    with s.batch():
        for i in range(5):
            s.put("configmaps", obj(f"c{i}"), event_type="ADDED")
    s.close()
    assert len(Store(tmp_path / "api.db").list("configmaps")) == 5


@pytest.mark.parametrize(
    "since,want",
    [(2, TooOld), (3, ["c3", "c4", "c5"]), (5, ["c5"]), (6, [])],
    ids=["evicted", "oldest-kept-boundary", "recent", "up-to-date"],
)
def test_history_window(tmp_path, since, want):
    s = Store(tmp_path / "api.db", history=3)
    for i in range(6):
        s.put("configmaps", obj(f"c{i}"), event_type="ADDED")
    if want is TooOld:
        with pytest.raises(TooOld):
            list(s.events_since(since, "configmaps", None))
    else:
        assert [e.name for e in s.events_since(since, "configmaps", None)] == want
    s.close()


def test_events_carry_the_previous_object_and_filter_by_namespace(tmp_path):
    s = Store(tmp_path / "api.db")
    s.put("configmaps", obj("a", "one", v="1"), event_type="ADDED")
    s.put("configmaps", obj("a", "two"), event_type="ADDED")
    s.put("configmaps", obj("a", "one", v="2"), event_type="MODIFIED")
    events = list(s.events_since(0, "configmaps", "one"))
    assert [(e.type, e.obj["data"].get("v")) for e in events] == [("ADDED", "1"), ("MODIFIED", "2")]
    assert events[1].prev["data"] == {"v": "1"}
    s.close()
