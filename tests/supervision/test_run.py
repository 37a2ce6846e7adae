"""The three ways to run a supervisor: run() in this process, start(), and embedded."""

import os
import signal
import threading
import time

import pytest
from multiprocess.connection import wait

from supervision import ChildSpec, DynamicSupervisor, Supervisor, SupervisorGone
from supervision.process import _ctx
from tests.supervision.support import Proc, exit_with, serve, sleep_forever


def run_in_plain_process(trees, sup):
    """sup.run() in a forked process that is no supervised child (like `python main.py`)."""
    proc = _ctx.Process(target=sup.run)
    proc.start()
    trees.watch([proc.pid])
    return proc


def test_run_blocks_until_sigterm_then_returns(trees):
    events = trees.events()
    proc = run_in_plain_process(trees, Supervisor([ChildSpec("a", sleep_forever)],
                                                  on_event=events))
    child = Proc(events.wait1("started", "a").pid)
    assert child.alive()

    os.kill(proc.pid, signal.SIGTERM)

    proc.join(10)
    assert proc.exitcode == 0
    assert events.wait1("terminated", "a").reason == "signal SIGTERM"
    assert not child.alive()


def test_run_exits_1_when_it_gives_up(trees):
    proc = run_in_plain_process(trees, Supervisor([ChildSpec("c", exit_with, args=(2,))],
                                                  intensity=1))
    proc.join(10)
    assert proc.exitcode == 1


def test_on_start_runs_before_the_supervisor_reports_ready(trees):
    def more(sup):
        sup.start_child(ChildSpec("added", sleep_forever))

    handle = trees.start(Supervisor([ChildSpec("first", sleep_forever)], on_start=more))

    assert [c.id for c in handle.which_children()] == ["first", "added"]


def later(sup, payload):
    """Handler: start a child `delay` seconds from now, from a call_later timer."""
    _, delay = payload
    sup.call_later(delay, lambda: sup.start_child(ChildSpec("late", sleep_forever)))
    return time.time()


def test_call_later_runs_in_the_loop_when_due(trees):
    events = trees.events()
    handle = trees.start(Supervisor([], handler=later, on_event=events))

    asked = handle.call(("later", 0.3))

    started = events.wait1("started", "late")
    assert started.time - asked >= 0.3
    assert handle.which_children()[0].id == "late"


def pump(sup, until, timeout=10.0, also=()):
    """Drive an embedded supervisor's loop until `until()` is true.

    As a host's loop would, it also wakes for `also` (what makes `until` true
    outside the supervisor), and passes the supervisor only what is its own.
    """
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        assert left > 0, "the condition did not come true in time"
        timer = sup.next_timeout()
        ready = wait([*sup.wait_objects(), *also], left if timer is None else min(left, timer))
        sup.handle([obj for obj in ready if obj not in also])


@pytest.fixture
def embedded(trees):
    events = trees.events()
    pool = DynamicSupervisor(ChildSpec("w", serve), name="embedded", on_event=events)
    trees.embedded.append(pool)
    pool.open()
    return pool, events


def test_embedded_loop_restarts_and_answers_on_its_own_thread(embedded):
    pool, events = embedded

    cid = pool.start_child(7)  # runs directly: this is the loop's thread
    assert pool.call_child(cid, ("args",)) == (7,)
    first = pool.which_children()[0].pid

    os.kill(first, signal.SIGKILL)
    pump(pool, lambda: len(events.matching("started", cid)) == 2)

    assert events.matching("exited", cid)[0].reason == "signal SIGKILL"
    assert pool.which_children()[0].pid not in (None, first)


def test_embedded_loop_serves_other_threads_over_its_control_pipe(embedded):
    pool, events = embedded
    result = {}
    done_r, done_w = os.pipe()

    def other_thread():
        result["id"] = pool.start_child("from a thread", timeout=5)
        result["counts"] = pool.count_children(timeout=5)
        os.write(done_w, b"done")

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        pump(pool, lambda: "counts" in result, also=[done_r])
    finally:
        thread.join(5)
        os.close(done_r)
        os.close(done_w)

    assert result == {"id": "w-1", "counts": {
        "specs": 1, "active": 1, "supervisors": 0, "workers": 1}}


def test_embedded_close_stops_children_and_later_calls_fail(embedded):
    pool, events = embedded
    children = []
    for _ in range(2):
        pool.start_child()
        children.append(Proc(pool.which_children()[-1].pid))

    pool.close()

    assert not any(p.alive() for p in children)  # close() returns once they exited
    assert [e.child_id for e in events.matching("terminated")] == ["w-2", "w-1"]
    with pytest.raises(SupervisorGone):
        pool.which_children()


def test_embedded_timers(embedded):
    pool, _ = embedded
    fired = []
    t0 = time.monotonic()
    pool.call_later(0.2, lambda: fired.append(time.monotonic()))
    assert 0 < pool.next_timeout() <= 0.2

    pump(pool, lambda: fired)

    assert fired[0] - t0 >= 0.2
    assert pool.next_timeout() is None
