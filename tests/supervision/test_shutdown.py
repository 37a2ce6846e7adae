"""Shutdown: reverse start order, SIGTERM then SIGKILL, brutal_kill, infinity, signals."""

import os
import signal
import time
from pathlib import Path

import pytest

import supervision
from supervision import ChildSpec, Supervisor
from tests.supervision.support import append_line, sleep_forever, tree_pids, wait_dead


def note_sigterm(path, name):
    """Append `name` to `path` on SIGTERM, then exit normally."""

    def on_term(signum, frame):
        append_line(path, name)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    supervision.ready()
    sleep_forever()


def ignore_sigterm():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    supervision.ready()
    sleep_forever()


def slow_to_stop(seconds):
    """Take `seconds` to exit (normally) after SIGTERM."""

    def on_term(signum, frame):
        time.sleep(seconds)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    supervision.ready()
    sleep_forever()


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def noting(path, name, **kw):
    return ChildSpec(name, note_sigterm, args=(path, name), notify_ready=True, **kw)


def test_stop_terminates_children_in_reverse_start_order(trees, tmp_path):
    events, log = trees.events(), tmp_path / "order"
    sup = Supervisor([noting(log, n) for n in "abc"], on_event=events)
    handle = trees.start(sup)
    trees.watch(tree_pids(handle).values())

    assert handle.stop() == 0

    assert lines(log) == ["c", "b", "a"]
    kinds = [(e.kind, e.child_id, e.reason) for e in events.read()[3:]]
    assert kinds == [("shutdown", None, None), ("terminated", "c", "normal"),
                     ("terminated", "b", "normal"), ("terminated", "a", "normal")]


def test_a_child_ignoring_sigterm_is_killed_after_its_shutdown_time(trees):
    events = trees.events()
    spec = ChildSpec("stubborn", ignore_sigterm, shutdown=0.5, notify_ready=True)
    handle = trees.start(Supervisor([spec], on_event=events))
    (child,) = trees.watch([handle.which_children()[0].pid])

    t0 = time.monotonic()
    handle.terminate_child("stubborn")
    took = time.monotonic() - t0

    assert 0.5 <= took < 3.0
    assert events.wait1("terminated", "stubborn").reason == "signal SIGKILL"
    assert not child.alive()
    assert handle.which_children()[0].state == "stopped"


def test_brutal_kill_sends_sigkill_at_once(trees, tmp_path):
    events, log = trees.events(), tmp_path / "log"
    spec = noting(log, "quick", shutdown="brutal_kill")  # would exit 0 on SIGTERM
    handle = trees.start(Supervisor([spec], on_event=events))

    t0 = time.monotonic()
    handle.terminate_child("quick")

    assert time.monotonic() - t0 < 0.5
    assert events.wait1("terminated", "quick").reason == "signal SIGKILL"
    assert lines(log) == []  # it never saw a SIGTERM


def test_infinity_waits_for_a_slow_child(trees):
    events = trees.events()
    spec = ChildSpec("slow", slow_to_stop, args=(1.0,), shutdown="infinity", notify_ready=True)
    handle = trees.start(Supervisor([spec], on_event=events))

    t0 = time.monotonic()
    handle.terminate_child("slow")

    assert time.monotonic() - t0 >= 1.0
    assert events.wait1("terminated", "slow").reason == "normal"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_shuts_the_subtree_down_in_order(trees, tmp_path, sig):
    events, log = trees.events(), tmp_path / "order"
    mid = Supervisor([noting(log, "x"), noting(log, "y")], name="mid", on_event=events)
    root = Supervisor([noting(log, "a"), ChildSpec("mid", mid.run, type="supervisor"),
                       noting(log, "b")], name="root", on_event=events)
    handle = trees.start(root)
    procs = trees.watch(tree_pids(handle).values())

    os.kill(handle.pid, sig)

    assert handle.join(10) == 0
    assert lines(log) == ["b", "y", "x", "a"]
    assert events.wait1("terminated", "mid").reason == "normal"
    wait_dead(procs, 2)


def test_a_second_signal_hurries_the_shutdown(trees):
    events = trees.events()
    spec = ChildSpec("stubborn", ignore_sigterm, shutdown=30, notify_ready=True)
    handle = trees.start(Supervisor([spec], on_event=events))
    t0 = time.monotonic()

    os.kill(handle.pid, signal.SIGTERM)
    events.wait1("shutdown")
    os.kill(handle.pid, signal.SIGTERM)

    assert handle.join(10) == 0
    assert time.monotonic() - t0 < 5
    assert events.wait1("terminated", "stubborn").reason == "signal SIGKILL"


def churn(sup, payload):
    """Handler: start children and terminate each at once, right after its fork."""
    _, n = payload
    t0 = time.monotonic()
    for i in range(n):
        sup.start_child(ChildSpec(f"c{i}", sleep_forever, shutdown=5))
        sup.terminate_child(f"c{i}")
    return time.monotonic() - t0


def test_a_child_terminated_right_after_its_fork_dies_of_sigterm(trees):
    """A SIGTERM sent before the child reset its inherited handlers still ends it.

    It used to be swallowed by the supervisor's handler copied into the child,
    whose wakeup fd then told the supervisor it had received a SIGTERM itself.
    """
    events = trees.events()
    handle = trees.start(Supervisor([], handler=churn, on_event=events))

    took = handle.call(("churn", 20))

    reasons = [e.reason for e in events.matching("terminated")]
    assert reasons == ["signal SIGTERM"] * 20
    assert took < 4  # not 5 s of shutdown timeout for any of them
    assert handle.count_children()["specs"] == 20  # and the supervisor still runs
    assert events.matching("shutdown") == []
