"""A partition's global state (pure, no broker): queue keys and their time to live."""

from roger.partition.state import State

TTL = 60.0


def test_a_key_is_taken_until_released_by_its_own_job():
    state = State()
    assert state.claim([("k", "a")], now=0.0) == []
    assert state.claim([("k", "b")], now=1.0) == ["k"]
    assert not state.release("k", "b")  # a stale release frees nothing
    assert state.release("k", "a")
    assert state.claim([("k", "b")], now=2.0) == []


def test_a_key_held_past_its_ttl_is_freed_and_reported():
    state = State()
    state.claim([("old", "a")], now=0.0)
    state.claim([("new", "b")], now=50.0)

    assert state.expire_keys(before=100.0 - TTL) == [("old", "a")]
    assert state.queue_keys == {"new": "b"}
    assert state.claim([("old", "c")], now=100.0) == []


def test_expiring_only_some_keys_leaves_the_others():
    state = State()
    state.claim([("x", "a"), ("y", "b")], now=0.0)
    assert state.expire_keys(before=10.0, keys=["x", "unknown"]) == [("x", "a")]
    assert state.queue_keys == {"y": "b"}


def test_the_same_job_claiming_its_key_again_holds_it_afresh():
    state = State()
    state.claim([("k", "a")], now=0.0)
    assert state.claim([("k", "a")], now=100.0) == []  # the same record enqueued again
    assert state.expire_keys(before=100.0 - TTL) == []


def test_releasing_a_jobs_keys_by_its_id():
    state = State()
    state.claim([("k", "a"), ("other", "b")], now=0.0)
    assert state.release_job("a") == ["k"]
    assert state.release_job("a") == []
    assert state.queue_keys == {"other": "b"}


def test_saved_state_keeps_when_each_key_was_claimed():
    state = State()
    state.claim([("k", "a")], now=5.0)
    loaded = State.from_dict(state.to_dict(), now=1000.0)
    assert loaded.queue_keys == {"k": "a"}
    assert loaded.expire_keys(before=6.0) == [("k", "a")]


def test_state_saved_before_key_times_counts_its_keys_from_the_load():
    old_file = {"queue_keys": {"k": "a"}, "exec_holders": {}, "exec_waiting": {},
                "cancelled": {}, "paused": ["default"]}
    loaded = State.from_dict(old_file, now=1000.0)
    assert loaded.queue_keys == {"k": "a"} and loaded.paused == {"default"}
    assert loaded.expire_keys(before=1000.0) == []
    assert loaded.expire_keys(before=1000.5) == [("k", "a")]
