"""The work queue, expectations and the controller loop, with a recording applier."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from sandbox.controllers.actions import Create, Delete, Patch, Requeue
from sandbox.controllers.errors import ApplyError, ConflictError
from sandbox.controllers.queue import WorkQueue
from sandbox.controllers.runtime import ControllerLoop, Expectations


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---- work queue --------------------------------------------------------------------------------
def test_burst_of_adds_is_one_item():
    clock = Clock()
    q = WorkQueue(debounce=0.05, clock=clock)
    for _ in range(10):
        q.add("k")
    assert len(q) == 1
    assert q.get(timeout=0) is None  # not due yet
    clock.t += 0.05
    assert q.get(timeout=0) == "k"
    assert q.get(timeout=0) is None


def test_earlier_add_wins():
    clock = Clock()
    q = WorkQueue(debounce=0.05, clock=clock)
    q.add("k", delay=10)
    q.add("k", delay=1)
    clock.t += 1
    assert q.get(timeout=0) == "k"


def test_due_order():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add("late", delay=2)
    q.add("early", delay=1)
    clock.t += 3
    assert [q.get(timeout=0), q.get(timeout=0)] == ["early", "late"]


def test_key_added_while_processing_runs_again_after_done_never_concurrently():
    clock = Clock()
    q = WorkQueue(debounce=0, clock=clock)
    q.add("k")
    assert q.get(timeout=0) == "k"
    q.add("k")
    assert q.get(timeout=0) is None  # still in progress
    q.done("k")
    assert q.get(timeout=0) == "k"


def test_retry_backs_off_exponentially_until_forgotten():
    clock = Clock()
    q = WorkQueue(base_backoff=1.0, max_backoff=8.0, clock=clock)
    delays = []
    for _ in range(6):
        delays.append(q.retry("k"))
        clock.t += 100
        assert q.get(timeout=0) == "k"
        q.done("k")
    assert [round(d / b, 1) <= 1.2 and d / b >= 0.8 for d, b in zip(delays, [1, 2, 4, 8, 8, 8])] == [True] * 6
    q.forget("k")
    assert q.failures("k") == 0


def test_get_blocks_until_due_and_close_wakes_it():
    q = WorkQueue(debounce=0.05)
    q.add("k")
    assert q.get(timeout=2) == "k"
    result = []
    t = threading.Thread(target=lambda: result.append(q.get(timeout=5)))
    t.start()
    q.close()
    t.join(2)
    assert result == [None]


# ---- expectations ------------------------------------------------------------------------------
class DictStore:
    def __init__(self, objects=None):
        self.objects = {}
        for kind, obj in objects or []:
            self.put(kind, obj)

    def put(self, kind, obj):
        m = obj["metadata"]
        self.objects[(kind, m.get("namespace", ""), m["name"])] = obj

    def remove(self, kind, ns, name):
        self.objects.pop((kind, ns, name), None)

    def get(self, kind, key):
        return self.objects.get((kind, *key))

    def list(self, kind, namespace=None):
        return [o for (k, ns, _), o in sorted(self.objects.items()) if k == kind and namespace in (None, ns)]


def pod(name, *, rv="5", uid=None, deleting=False):
    meta = {"name": name, "namespace": "demo", "resourceVersion": rv, "uid": uid or f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T12:00:00Z"
    return {"metadata": meta}


def create(name, why="x"):
    return Create(kind="Pod", namespace="demo", body={"metadata": {"name": name}}, why=why)


def delete(name, why="x", **kw):
    return Delete(kind="Pod", namespace="demo", name=name, why=why, **kw)


def patch(name, why="x"):
    return Patch(kind="Pod", namespace="demo", name=name, body={}, why=why)


RV9 = {"metadata": {"resourceVersion": "9"}}


@pytest.mark.parametrize(
    "action,result,store_after,met",
    [
        pytest.param(create("p"), None, [], False, id="create-unseen"),
        pytest.param(create("p"), None, [pod("p")], True, id="create-seen"),
        pytest.param(delete("p", uid="uid-p"), None, [pod("p")], False, id="delete-unseen"),
        pytest.param(delete("p", uid="uid-p"), None, [], True, id="delete-seen"),
        pytest.param(delete("p", uid="uid-p"), None, [pod("p", deleting=True)], True, id="delete-seen-as-terminating"),
        pytest.param(delete("p", uid="uid-p"), None, [pod("p", uid="uid-new")], True, id="delete-seen-namesake"),
        pytest.param(patch("p"), RV9, [pod("p", rv="5")], False, id="patch-unseen"),
        pytest.param(patch("p"), RV9, [pod("p", rv="9")], True, id="patch-seen"),
        pytest.param(patch("p"), RV9, [pod("p", rv="12")], True, id="patch-overtaken"),
    ],
)
def test_expectations(action, result, store_after, met):
    e = Expectations(timeout=15, clock=Clock())
    e.expect("k", action, result=result)
    store = DictStore([("Pod", o) for o in store_after])
    assert (e.wait_time("k", store) == 0) is met


def test_expectations_expire():
    clock = Clock()
    e = Expectations(timeout=15, clock=clock)
    e.expect("k", create("p"), result=None)
    assert e.wait_time("k", DictStore()) == pytest.approx(15)
    clock.t += 16
    assert e.wait_time("k", DictStore()) == 0


# ---- the loop ----------------------------------------------------------------------------------
class Recorder:
    def __init__(self, *, fail=None, owners_alive=()):
        self.applied = []
        self.fail = fail or {}
        self.owners_alive = set(owners_alive)

    def apply(self, action):
        if action.describe() in self.fail:
            raise self.fail[action.describe()]
        self.applied.append(action)
        return {"metadata": {"resourceVersion": "100"}} if isinstance(action, Patch) else None

    def owner_exists(self, namespace, ref):
        return ref.get("uid") in self.owners_alive


class Fixed:
    """A controller whose sync returns a fixed list of actions."""

    name = "fixed"
    kinds = ("Pod",)

    def __init__(self, actions):
        self.actions = actions
        self.calls = 0

    def keys_for(self, kind, obj, *, etype, store):
        return (obj["metadata"]["name"],)

    def sync(self, key, store, *, now):
        self.calls += 1
        return list(self.actions)


def make_loop(actions, **applier_kw):
    clock = Clock()
    controller = Fixed(actions)
    applier = Recorder(**applier_kw)
    loop = ControllerLoop(controller, store=DictStore(), applier=applier, queue=WorkQueue(clock=clock),
                          expectations=Expectations(clock=clock), now=lambda: datetime(2024, 5, 1, tzinfo=timezone.utc))
    return loop, controller, applier, clock


def test_actions_applied_in_order_and_logged(caplog):
    a = [create("p1", why="scale up"), delete("p0", why="scale down")]
    loop, _, applier, _ = make_loop(a)
    with caplog.at_level("INFO", logger="sandbox.controllers"):
        loop.process("k")
    assert applier.applied == a
    assert [r.getMessage() for r in caplog.records] == ["create Pod demo/p1 (scale up)",
                                                        "delete Pod demo/p0 (scale down)"]


def test_key_held_back_until_the_cache_shows_its_last_actions():
    loop, controller, applier, clock = make_loop([create("p1", why="up")])
    loop.process("k")
    loop.queue.done("k")
    loop.process("k")  # the cache has not shown p1 yet: no second create
    assert controller.calls == 1 and len(applier.applied) == 1
    loop.store.put("Pod", pod("p1"))
    loop.process("k")
    assert controller.calls == 2


@pytest.mark.parametrize("error", [ConflictError("conflict", status=409), ApplyError("boom", status=500),
                                   RuntimeError("client broke")])
def test_failure_stops_the_batch_and_retries_with_backoff(error):
    first, second = patch("a", why="one"), patch("b", why="two")
    loop, _, applier, clock = make_loop([first, second], fail={first.describe(): error})
    loop.process("k")
    loop.queue.done("k")
    assert applier.applied == []
    assert loop.queue.failures("k") == 1
    assert loop.queue.get(timeout=0) is None  # backing off
    clock.t += 1
    assert loop.queue.get(timeout=0) == "k"


def test_requeue_action_schedules_the_key():
    loop, _, applier, clock = make_loop([Requeue(after=5, why="minReadySeconds")])
    loop.process("k")
    loop.queue.done("k")
    assert applier.applied == []
    clock.t += 4.9
    assert loop.queue.get(timeout=0) is None
    clock.t += 0.2
    assert loop.queue.get(timeout=0) == "k"


def test_garbage_collection_delete_checks_owners_live():
    owner = {"kind": "ReplicaSet", "name": "web-abc", "uid": "uid-rs"}
    gc_delete = delete("p", why="owner gone", uid="uid-p", unless_owners_exist=(owner,))
    loop, _, applier, _ = make_loop([gc_delete], owners_alive={"uid-rs"})
    loop.process("k")
    assert applier.applied == []
    loop, _, applier, _ = make_loop([gc_delete])
    loop.process("k")
    assert applier.applied == [gc_delete]


def test_events_map_to_keys():
    loop, _, _, clock = make_loop([])
    loop.on_event("Pod", pod("p1"), etype="ADDED")
    loop.on_event("Node", {"metadata": {"name": "node-1"}}, etype="ADDED")  # not a kind it reads
    clock.t += 1
    assert loop.queue.get(timeout=0) == "p1"
    assert loop.queue.get(timeout=0) is None


def test_a_failed_live_read_in_sync_is_retried_with_a_warning_not_a_bug(caplog):
    loop, controller, applier, clock = make_loop([])

    def failing_sync(key, store, *, now):
        raise ApplyError("list configmaps in shop: cannot reach the API server", status=0)

    controller.sync = failing_sync
    with caplog.at_level("INFO", logger="sandbox.controllers"):
        loop.process("k")
    loop.queue.done("k")
    assert [(r.levelname, r.getMessage().split(" (again")[0]) for r in caplog.records] == [
        ("WARNING", "list configmaps in shop: cannot reach the API server")]
    assert loop.queue.failures("k") == 1
    clock.t += 1
    assert loop.queue.get(timeout=0) == "k"
