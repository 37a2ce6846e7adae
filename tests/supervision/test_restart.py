"""Restart types, restart intensity, escalation, and significant children."""

import os
import signal
import sys
import time

import pytest

import supervision
from supervision import ChildSpec, Supervisor
from tests.supervision.support import exit_with, flag, serve, sleep_forever, tree_pids, wait_dead


def end_first_run(flag_path, how):
    """End the first time as told ("exit 0", "exit 1", "kill"); run for good after."""
    if flag(flag_path):
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(int(how.split()[1]))
    sleep_forever()


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
@pytest.mark.parametrize("how, reason", [
    ("exit 0", "normal"), ("exit 1", "exit code 1"), ("kill", "signal SIGKILL"),
])
def test_restart_types(trees, tmp_path, restart, how, reason):
    events = trees.events()
    spec = ChildSpec("c", end_first_run, args=(tmp_path / "flag", how), restart=restart)
    handle = trees.start(Supervisor([spec, ChildSpec("other", sleep_forever)],
                                    on_event=events))

    exited = events.wait1("exited", "c")
    assert exited.reason == reason
    # The exit was handled, restart included, before this call is answered.
    children = {c.id: c for c in handle.which_children()}
    counts = handle.count_children()

    if restart == "permanent" or (restart == "transient" and how != "exit 0"):
        restarted = events.wait("started", "c", count=2)[1]
        assert children["c"].state == "running"
        assert children["c"].pid == restarted.pid != exited.pid
        assert children["c"].restarts == 1
        assert counts == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    elif restart == "transient":  # a normal exit: kept, stopped
        assert (children["c"].state, children["c"].pid) == ("stopped", None)
        assert counts == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    else:  # temporary: never restarted, and forgotten
        assert "c" not in children
        assert counts == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    if "c" not in children or children["c"].state == "stopped":
        assert events.matching("restarting", "c") == []


def test_more_restarts_than_intensity_shut_the_supervisor_down(trees):
    events = trees.events()
    sup = Supervisor([ChildSpec("bystander", sleep_forever),
                      ChildSpec("crasher", exit_with, args=(3,))],
                     intensity=2, period=30, on_event=events)
    handle = trees.start(sup)
    trees.watch([events.wait1("started", "bystander").pid])

    assert handle.join(10) == 1

    crashes = events.matching("exited", "crasher")
    assert [e.reason for e in crashes] == ["exit code 3"] * 3  # two restarts were allowed
    assert len(events.matching("restarting", "crasher")) == 2
    tail = [(e.kind, e.child_id) for e in events.read()][-3:]
    assert tail == [("intensity_exceeded", "crasher"), ("shutdown", None),
                    ("terminated", "bystander")]


def test_escalation_through_two_levels(trees):
    """leaf keeps crashing -> mid gives up (exit 1) -> root restarts mid -> root gives up."""
    events = trees.events()
    mid = Supervisor([ChildSpec("leaf", exit_with, args=(1,))],
                     intensity=1, period=30, name="mid", on_event=events)
    root = Supervisor([ChildSpec("mid", mid.run, type="supervisor"),
                       ChildSpec("sibling", sleep_forever)],
                      intensity=1, period=30, name="root", on_event=events)
    handle = trees.start(root)
    trees.watch([events.wait1("started", "sibling").pid])

    assert handle.join(15) == 1

    assert len(events.matching("intensity_exceeded", supervisor="mid")) == 2
    mid_exits = events.matching("exited", "mid", supervisor="root")
    assert [e.reason for e in mid_exits] == ["exit code 1", "exit code 1"]
    assert len(events.matching("restarting", "mid", supervisor="root")) == 1
    assert events.matching("intensity_exceeded", supervisor="root")[0].child_id == "mid"
    assert events.matching("terminated", "sibling")[0].reason == "signal SIGTERM"


def significant_tree(trees, auto_shutdown, restart="transient"):
    events = trees.events()
    sup = Supervisor([
        ChildSpec("plain", sleep_forever),
        ChildSpec("s1", serve, restart=restart, significant=True),
        ChildSpec("s2", serve, restart=restart, significant=True),
    ], auto_shutdown=auto_shutdown, on_event=events)
    handle = trees.start(sup)
    procs = trees.watch(tree_pids(handle).values())
    return handle, events, procs


def test_any_significant_child_exiting_shuts_the_supervisor_down(trees):
    handle, events, procs = significant_tree(trees, "any_significant")

    handle.cast_child("s1", ("exit", 0))

    assert handle.join(10) == 0
    assert events.wait1("exited", "s1").reason == "normal"
    assert [e.child_id for e in events.matching("terminated")] == ["s2", "plain"]
    wait_dead(procs, 2)


def test_all_significant_children_must_exit_to_shut_the_supervisor_down(trees):
    handle, events, procs = significant_tree(trees, "all_significant")

    handle.cast_child("s1", ("exit", 0))
    events.wait1("exited", "s1")
    assert {c.id: c.state for c in handle.which_children()} == {
        "plain": "running", "s1": "stopped", "s2": "running"}

    handle.cast_child("s2", ("exit", 0))

    assert handle.join(10) == 0
    assert [e.child_id for e in events.matching("terminated")] == ["plain"]
    wait_dead(procs, 2)


def test_a_significant_transient_child_crashing_is_restarted(trees):
    handle, events, _ = significant_tree(trees, "any_significant")

    handle.cast_child("s1", ("exit", 2))

    assert events.wait1("exited", "s1").reason == "exit code 2"
    assert events.wait("started", "s1", count=2)
    assert handle.count_children()["active"] == 3
    assert events.matching("shutdown") == []


def test_a_significant_temporary_child_killed_shuts_the_supervisor_down(trees):
    handle, events, _ = significant_tree(trees, "any_significant", restart="temporary")

    handle.cast_child("s2", ("kill",))

    assert handle.join(10) == 0
    assert events.wait1("exited", "s2").reason == "signal SIGKILL"
    assert [e.child_id for e in events.matching("terminated")] == ["s1", "plain"]


def test_never_ignores_significant_children(trees):
    handle, events, _ = significant_tree(trees, "never")

    handle.cast_child("s1", ("exit", 0))

    events.wait1("exited", "s1")
    assert handle.count_children()["active"] == 2
    assert events.matching("shutdown") == []


def unblock_then_sleep(block_path):
    block_path.unlink(missing_ok=True)
    supervision.ready()
    sleep_forever()


def ready_unless_blocked(block_path):
    """Start only while `block_path` does not exist; else fail to start, slowly."""
    if block_path.exists():
        time.sleep(0.2)
        sys.exit(2)
    supervision.ready()
    sleep_forever()


def test_a_failing_restart_lets_the_supervisor_handle_what_happens_meanwhile(trees, tmp_path):
    # "user" can start only while "dep" runs, as roger's consumer needs its
    # partition's coordinator. dep dies while user's restart keeps failing:
    # the supervisor must restart dep between user's attempts (OTP's
    # try_again_restart), not retry user for as long as its budget lasts.
    block = tmp_path / "blocked"
    events = trees.events()
    sup = Supervisor([ChildSpec("dep", unblock_then_sleep, args=(block,), notify_ready=True),
                      ChildSpec("user", ready_unless_blocked, args=(block,), notify_ready=True)],
                     intensity=100, period=5, on_event=events)
    handle = trees.start(sup)
    before = tree_pids(handle)

    block.touch()
    os.kill(before[("user",)], signal.SIGKILL)
    events.wait1("start_failed", "user")
    assert [c.id for c in handle.which_children()] == ["dep", "user"]  # answered meanwhile
    os.kill(before[("dep",)], signal.SIGKILL)

    events.wait("started", "user", count=2, timeout=10)
    after = tree_pids(handle)
    assert after[("dep",)] != before[("dep",)] and after[("user",)] != before[("user",)]
    assert not block.exists()

