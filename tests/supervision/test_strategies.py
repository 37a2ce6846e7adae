"""Strategies: which children a crash restarts, in which order, and who keeps its pid."""

import os
import signal

import pytest

from supervision import ChildSpec, Supervisor
from tests.helpers import wait_for
from tests.supervision.support import Proc, sleep_forever, wait_dead

IDS = ["a", "b", "c", "d"]


def start_four(trees, strategy):
    events = trees.events()
    sup = Supervisor([ChildSpec(i, sleep_forever, shutdown=2) for i in IDS],
                     strategy=strategy, intensity=5, on_event=events)
    handle = trees.start(sup)
    pids = {c.id: c.pid for c in handle.which_children()}
    trees.watch(pids.values())
    return handle, events, pids


@pytest.mark.parametrize("strategy, restarted, terminated", [
    ("one_for_one", ["b"], []),
    ("one_for_all", ["a", "b", "c", "d"], ["d", "c", "a"]),
    ("rest_for_one", ["b", "c", "d"], ["d", "c"]),
])
def test_a_crash_restarts_per_strategy(trees, strategy, restarted, terminated):
    handle, events, before = start_four(trees, strategy)
    old = {i: Proc(pid) for i, pid in before.items()}
    assert all(p.alive() for p in old.values())
    mark = events.mark()

    os.kill(before["b"], signal.SIGKILL)

    # The last child to start again marks the end of the restart.
    events.wait("started", restarted[-1], after=mark)
    after = {c.id: c.pid for c in handle.which_children()}
    trees.watch(after.values())
    seen = events.read()[mark:]
    # the crash, then the others stopped in reverse start order, then starts in order
    assert [(e.kind, e.child_id) for e in seen if e.kind != "restarting"] == (
        [("exited", "b")]
        + [("terminated", i) for i in terminated]
        + [("started", i) for i in restarted]
    )
    assert all(e.reason == "signal SIGTERM" for e in seen if e.kind == "terminated")
    for i in IDS:
        if i in restarted:
            assert after[i] != before[i], f"{i} should have been restarted"
            assert not old[i].alive()
        else:
            assert after[i] == before[i], f"{i} should have kept its pid"
    assert all(c.state == "running" for c in handle.which_children())
    assert {c.id: c.restarts for c in handle.which_children()} == {
        i: int(i in restarted) for i in IDS
    }


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_simultaneous_crashes_are_each_handled_once(trees, strategy):
    """Children dying together: a restart must not mistake a new child for a dead one.

    The supervisor is frozen (SIGSTOP) while its children are killed, so their
    exits reach one turn of its loop; restarting frees fds that new children's
    sentinels may then reuse. It used to take such a new child for an exited
    one and block in join() for good.
    """
    events = trees.events()
    n = 3
    sup = Supervisor([ChildSpec(str(i), sleep_forever, shutdown=2) for i in range(n)],
                     strategy=strategy, intensity=1000, period=1, on_event=events)
    handle = trees.start(sup)
    supervisor = Proc(handle.pid)
    for _ in range(8):
        pids = [c.pid for c in handle.which_children()]
        procs = [Proc(pid) for pid in pids]
        mark = events.mark()
        os.kill(handle.pid, signal.SIGSTOP)
        try:
            # kill() returns before the stop takes effect: a supervisor still
            # running could see the first death in a turn of its own.
            wait_for(lambda: supervisor.state() == "T", 5, "supervisor stopped")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            wait_dead(procs, 5)  # zombies, all reported by the next wait() at once
        finally:
            os.kill(handle.pid, signal.SIGCONT)
        events.wait("started", str(n - 1), after=mark, timeout=5)
        now = handle.which_children(timeout=5)
        assert all(c.state == "running" and c.pid not in pids for c in now)

