"""The parent-child link: calls, casts, events upward, and the start handshake."""

import time

import pytest

import supervision
from supervision import (
    CallFailed,
    CallTimeout,
    ChildSpec,
    Link,
    StartFailed,
    SupervisionError,
    Supervisor,
)
from supervision.process import _ctx
from tests.supervision.support import exit_with, serve, sleep_forever


def ready_after(seconds, path):
    """Take `seconds` to start, leave `path` behind, then report ready."""
    time.sleep(seconds)
    path.write_text("set up")
    supervision.ready()
    sleep_forever()


def say_hello_then_serve():
    supervision.parent().event(("hello", "from the child"))
    serve()


def test_a_child_answers_calls_from_its_supervisor(trees):
    handle = trees.start(Supervisor([ChildSpec("echo", serve, args=("x", 2))]))
    pid = handle.which_children()[0].pid

    assert handle.call_child("echo", ("add", 2, 3)) == 5
    assert handle.call_child("echo", ("args",)) == ("x", 2)
    assert handle.call_child("echo", ("supervised",)) is True
    # the callee's own exception reaches the caller; the child lives on
    with pytest.raises(ValueError, match="boom"):
        handle.call_child("echo", ("raise", "boom"))
    with pytest.raises(CallFailed, match="Unpicklable: no pickle"):
        handle.call_child("echo", ("unpicklable", "no pickle"))
    assert handle.call_child("echo", ("pid",)) == pid


def test_casts_reach_the_child_and_its_events_reach_on_event(trees):
    events = trees.events()
    handle = trees.start(Supervisor([ChildSpec("echo", say_hello_then_serve)], on_event=events))

    hello = events.wait1("message", "echo")
    assert hello.payload == ("hello", "from the child")
    assert hello.supervisor == "supervisor" and hello.pid == handle.which_children()[0].pid

    handle.cast_child("echo", ("echo", 42))

    assert events.wait("message", "echo", count=2)[1].payload == ("echo", 42)


def test_a_call_without_reply_times_out_and_the_tree_goes_on(trees):
    handle = trees.start(Supervisor([ChildSpec("mute", sleep_forever)]))

    with pytest.raises(CallTimeout):
        handle.call_child("mute", ("add", 1), timeout=0.3)

    assert handle.count_children()["active"] == 1  # a late reply is not mistaken for this one


def test_link_call_timeout_is_a_timeout_not_a_gone_peer():
    a, b = _ctx.Pipe(duplex=True)
    try:
        with pytest.raises(CallTimeout, match="within 0.1 s"):
            Link(a).call(("ping",), timeout=0.1)
    finally:
        a.close()
        b.close()


def test_a_child_may_call_its_supervisor(trees):
    events = trees.events()
    handle = trees.start(Supervisor(
        [ChildSpec("asker", serve), ChildSpec("other", sleep_forever)],
        handler=lambda sup, payload: ("handled", payload), on_event=events,
    ))

    handle.cast_child("asker", ("ask", ("count_children",)))
    handle.cast_child("asker", ("ask", ("hi",)))

    first, second = events.wait("message", "asker", count=2)
    assert first.payload == ("answer", {"specs": 2, "active": 2, "supervisors": 0, "workers": 2})
    assert second.payload == ("answer", ("handled", ("hi",)))


def test_start_child_returns_once_the_child_is_ready(trees, tmp_path):
    events = trees.events()
    marker = tmp_path / "ready"
    handle = trees.start(Supervisor([], on_event=events))
    spec = ChildSpec("slow", ready_after, args=(0.3, marker), notify_ready=True)

    t0 = time.monotonic()
    assert handle.start_child(spec) == "slow"

    assert time.monotonic() - t0 >= 0.3
    assert marker.read_text() == "set up"
    assert events.wait1("started", "slow").pid == handle.which_children()[0].pid


def event_then_ready():
    supervision.parent().event("before ready")
    supervision.ready()
    sleep_forever()


def test_an_event_sent_before_ready_is_reported(trees):
    events = trees.events()
    handle = trees.start(Supervisor([], on_event=events))

    handle.start_child(ChildSpec("early", event_then_ready, notify_ready=True))

    assert events.wait1("message", "early", timeout=5).payload == "before ready"


def test_a_supervisor_starts_once_its_children_are_ready(trees, tmp_path):
    marker = tmp_path / "ready"
    spec = ChildSpec("slow", ready_after, args=(0.3, marker), notify_ready=True)
    trees.start(Supervisor([spec]))
    assert marker.read_text() == "set up"


def test_a_child_that_dies_before_ready_fails_to_start(trees):
    events = trees.events()
    handle = trees.start(Supervisor([ChildSpec("ok", sleep_forever)], on_event=events))

    with pytest.raises(StartFailed, match="'dud'.*exit code 3"):
        handle.start_child(ChildSpec("dud", exit_with, args=(3,), notify_ready=True))

    assert events.wait1("start_failed", "dud").reason == "exit code 3"
    assert [c.id for c in handle.which_children()] == ["ok"]


def test_a_child_not_ready_in_time_is_killed(trees):
    events = trees.events()
    handle = trees.start(Supervisor([], on_event=events))
    spec = ChildSpec("sloth", sleep_forever, notify_ready=True, start_timeout=0.3)

    with pytest.raises(StartFailed, match="not ready within 0.3 s"):
        handle.start_child(spec)

    failed = events.wait1("start_failed", "sloth")
    assert failed.reason == "signal SIGKILL"
    assert handle.which_children() == []


def test_a_supervisor_whose_child_fails_to_start_does_not_start(trees):
    events = trees.events()
    sup = Supervisor([ChildSpec("ok", sleep_forever),
                      ChildSpec("dud", exit_with, args=(3,), notify_ready=True)],
                     on_event=events)

    with pytest.raises(StartFailed, match="exit code 1"):  # the supervisor's own exit
        sup.start()

    assert events.wait1("start_failed", "dud").reason == "exit code 3"
    # the child started before it was stopped (and reaped) before the supervisor exited
    assert events.wait1("terminated", "ok").reason == "signal SIGTERM"
    assert events.matching("started", "ok")[0].pid != events.matching("start_failed")[0].pid


def test_outside_a_supervised_child_there_is_no_parent():
    assert supervision.is_supervised() is False
    supervision.ready()  # a no-op here
    with pytest.raises(SupervisionError, match="not a supervised child"):
        supervision.parent()


def ready_when_all_began(me, names, folder):
    """Report ready only once every sibling began its start: a barrier."""
    (folder / me).write_text("began")
    deadline = time.monotonic() + 10
    while not all((folder / n).exists() for n in names) and time.monotonic() < deadline:
        time.sleep(0.01)  # polls files: the siblings are other processes with no pipe to us
    if all((folder / n).exists() for n in names):
        supervision.ready()
    sleep_forever()


def test_start_children_starts_them_side_by_side(trees, tmp_path):
    # Each child waits for all the others to begin before it is ready: started
    # one after the other, the first would never be ready.
    names = ["a", "b", "c"]
    handle = trees.start(Supervisor([]))
    specs = [ChildSpec(n, ready_when_all_began, args=(n, names, tmp_path), notify_ready=True,
                       start_timeout=20) for n in names]

    assert handle.start_children(specs) == {"a": None, "b": None, "c": None}

    assert sorted(c.id for c in handle.which_children() if c.state == "running") == names


def test_start_children_reports_the_one_that_failed_and_keeps_the_others(trees):
    handle = trees.start(Supervisor([]))
    specs = [ChildSpec("good", event_then_ready, notify_ready=True),
             ChildSpec("bad", exit_with, args=(3,), notify_ready=True)]

    answer = handle.start_children(specs)

    assert answer["good"] is None
    assert "exit code 3" in answer["bad"]
    assert [c.id for c in handle.which_children()] == ["good"]


def test_start_children_refuses_an_id_twice(trees):
    handle = trees.start(Supervisor([]))
    with pytest.raises(SupervisionError, match="'x'"):
        handle.start_children([ChildSpec("x", sleep_forever), ChildSpec("x", sleep_forever)])
    assert handle.which_children() == []
