"""Runtime control from another process, dynamic supervisors, and the errors they raise."""

import pytest

from supervision import (
    ChildExists,
    ChildRunning,
    ChildSpec,
    DynamicSupervisor,
    MaxChildren,
    Supervisor,
    SupervisorGone,
    UnknownChild,
)
from tests.supervision.support import Proc, serve, sleep_forever


def test_dynamic_children_controlled_from_another_process(trees):
    events = trees.events()
    pool = DynamicSupervisor(ChildSpec("w", serve, args=("base",)), on_event=events)
    handle = trees.start(pool)

    assert handle.start_child(1) == "w-1"
    assert handle.start_child(2) == "w-2"
    assert handle.call_child("w-1", ("args",)) == ("base", 1)  # template args, then ours
    assert handle.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    first = handle.which_children()[0]
    assert (first.id, first.state, first.type, first.restart) == (
        "w-1", "running", "worker", "permanent")
    old = Proc(first.pid)
    assert old.alive()

    handle.terminate_child("w-1")
    assert not old.alive()
    assert events.wait1("terminated", "w-1").reason == "signal SIGTERM"


def test_a_terminated_dynamic_child_is_gone_as_in_otp(trees):
    handle = trees.start(DynamicSupervisor(ChildSpec("w", serve)))
    handle.start_child()
    handle.start_child()

    handle.terminate_child("w-1")

    assert [c.id for c in handle.which_children()] == ["w-2"]
    assert handle.count_children() == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    for op in (handle.terminate_child, handle.restart_child, handle.delete_child):
        with pytest.raises(UnknownChild, match="'w-1'"):
            op("w-1")
    assert handle.start_child() == "w-3"  # ids are never reused


def test_a_dynamic_child_that_exits_for_good_is_gone(trees):
    events = trees.events()
    handle = trees.start(DynamicSupervisor(ChildSpec("w", serve, restart="transient"),
                                           on_event=events))
    handle.start_child()
    handle.start_child()

    handle.cast_child("w-1", ("exit", 0))  # a transient child's normal exit: no restart
    events.wait1("exited", "w-1")

    assert [c.id for c in handle.which_children()] == ["w-2"]


def test_control_errors_are_clear(trees):
    handle = trees.start(Supervisor([ChildSpec("a", sleep_forever)]))

    for op in (handle.terminate_child, handle.restart_child, handle.delete_child):
        with pytest.raises(UnknownChild, match="no child with id 'nope'"):
            op("nope")
    with pytest.raises(ChildRunning, match="'a' is running"):
        handle.restart_child("a")
    with pytest.raises(ChildRunning, match="'a' is running"):
        handle.delete_child("a")
    with pytest.raises(ChildExists, match="'a'"):
        handle.start_child(ChildSpec("a", sleep_forever))
    with pytest.raises(UnknownChild):
        handle.call_child("nope", ("pid",))

    assert handle.stop() == 0
    with pytest.raises(SupervisorGone, match="not running"):
        handle.which_children()
    with pytest.raises(SupervisorGone):
        handle.start_child(ChildSpec("b", sleep_forever))


def test_max_children(trees):
    handle = trees.start(DynamicSupervisor(ChildSpec("w", sleep_forever), max_children=2))
    handle.start_child()
    handle.start_child()

    with pytest.raises(MaxChildren, match="max_children"):
        handle.start_child()

    handle.terminate_child("w-1")  # a terminated child leaves room
    assert handle.start_child() == "w-3"
    assert handle.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}


def test_a_nested_dynamic_supervisor_through_handle_child(trees):
    events = trees.events()
    pool = DynamicSupervisor(ChildSpec("w", serve), name="pool", on_event=events)
    root = Supervisor([ChildSpec("pool", pool.run, type="supervisor")], on_event=events)
    handle = trees.start(root)
    nested = handle.child("pool")

    cid = nested.start_child("hello")
    assert cid == "w-1"
    assert nested.call_child(cid, ("args",)) == ("hello",)
    assert nested.count_children() == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    assert events.wait1("started", cid).supervisor == "pool"

    nested.terminate_child(cid)
    assert nested.which_children() == []
    assert handle.count_children() == {"specs": 1, "active": 1, "supervisors": 1, "workers": 0}

    with pytest.raises(UnknownChild, match="pool: no child with id 'w-1'"):
        nested.terminate_child(cid)
    with pytest.raises(UnknownChild, match="'elsewhere'"):
        handle.child("elsewhere").which_children()
