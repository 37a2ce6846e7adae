"""Child specs and supervisor flags: defaults, and errors that name the field."""

import pytest

from supervision import ChildSpec, DynamicSupervisor, Event, InvalidSpec, Supervisor, describe_exit
from supervision.intensity import RestartWindow


def work():
    pass


def test_defaults():
    worker = ChildSpec("w", work)
    assert (worker.restart, worker.shutdown, worker.type, worker.significant,
            worker.notify_ready, worker.start_timeout) == (
        "permanent", 5.0, "worker", False, False, 60.0)
    sup = ChildSpec("s", work, type="supervisor")
    assert (sup.shutdown, sup.notify_ready) == ("infinity", True)
    assert ChildSpec("w", work, args=[1, 2], shutdown=2).args == (1, 2)


@pytest.mark.parametrize("field, kwargs", [
    ("id", {"id": ["unhashable"]}),
    ("start", {"start": "not callable"}),
    ("kwargs", {"kwargs": [("a", 1)]}),
    ("restart", {"restart": "sometimes"}),
    ("type", {"type": "manager"}),
    ("shutdown", {"shutdown": "later"}),
    ("shutdown", {"shutdown": -1}),
    ("shutdown", {"shutdown": True}),
    ("significant", {"significant": "yes"}),
    ("significant", {"significant": True}),  # permanent children cannot be significant
    ("start_timeout", {"start_timeout": 0}),
])
def test_invalid_child_spec_names_the_field(field, kwargs):
    args = {"id": "c", "start": work, **kwargs}
    with pytest.raises(InvalidSpec, match=f"^{field}: "):
        ChildSpec(**args)


@pytest.mark.parametrize("field, kwargs", [
    ("strategy", {"strategy": "one_for_some"}),
    ("intensity", {"intensity": -1}),
    ("intensity", {"intensity": 1.5}),
    ("period", {"period": 0}),
    ("auto_shutdown", {"auto_shutdown": "sometimes"}),
])
def test_invalid_supervisor_flag_names_the_flag(field, kwargs):
    with pytest.raises(InvalidSpec, match=f"^{field}: "):
        Supervisor([], **kwargs)


@pytest.mark.parametrize("max_children", [-1, "3"])
def test_invalid_max_children_names_the_flag(max_children):
    with pytest.raises(InvalidSpec, match="^max_children: "):
        DynamicSupervisor(ChildSpec("w", work), max_children=max_children)


def test_restart_window_slides():
    window = RestartWindow(intensity=2, period=10)
    assert [window.add(now=t) for t in (0, 1, 2)] == [True, True, False]
    assert window.add(now=11.5) is True  # the restarts at 0 and 1 left the window


def test_intensity_zero_allows_no_restart():
    assert RestartWindow(intensity=0, period=5).add(now=0) is False


def test_exit_reasons():
    assert [describe_exit(c) for c in (None, 0, 3, -9, -15)] == [
        "running", "normal", "exit code 3", "signal SIGKILL", "signal SIGTERM"]
    killed = Event("exited", "sup", "c", 42, -9)
    assert (killed.reason, killed.signal) == ("signal SIGKILL", "SIGKILL")
    assert Event("started", "sup", "c", 42).reason is None
