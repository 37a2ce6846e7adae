"""What the status page makes of the cluster's answers: rates and the per-partition view.

Pure functions fed with the shapes `roger.info.nodes()` returns; the real
nodes behind them are in ``test_web_http.py`` and ``test_web_browser.py``.
"""

from __future__ import annotations

import dataclasses

import pytest

from roger import info
from roger.settings import Settings
from roger.web import snapshot
from roger.web.rates import RateWindow, job_counters, per_queue
from roger.web.routes import Request, Routes
from roger.web.snapshot import build


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_is_the_increase_per_second_over_the_last_minute():
    clock = Clock()
    window = RateWindow(60.0, clock)
    for done in (0, 10, 30, 60):  # 60 done in 30 s
        window.add({"q": done})
        clock.now += 10
    assert window.rates()["q"] == pytest.approx(2.0)
    for _ in range(10):  # then nothing for 100 s: the old increase leaves the window
        window.add({"q": 60})
        clock.now += 10
    assert window.rates()["q"] == 0.0
    assert window.span() == pytest.approx(60.0)


def test_a_counter_that_goes_down_was_reset_and_counts_from_zero():
    clock = Clock()
    window = RateWindow(60.0, clock)
    for done in (100, 110, 5, 15):  # a consumer came back: its count restarted
        window.add({"q": done})
        clock.now += 10
    assert window.rates()["q"] == pytest.approx((10 + 5 + 10) / 30)


def test_no_rate_until_two_samples():
    window = RateWindow(60.0, Clock())
    assert window.rates() == {} and window.span() == 0.0
    window.add({"q": 5})
    assert window.rates() == {}


def _status(partition: str, queues: dict, *, idle: bool = False, paused=()) -> dict:
    entry = {"pid": None if idle else 42, "restarts": 1, "queues": queues,
             "coordinator": {"active": True, "paused": list(paused)}}
    if idle:
        entry["idle"] = True
    return entry


def test_counters_come_from_settled_jobs_and_the_growth_of_buried_and_rejected():
    nodes = {"a": {"running": {"p": _status("p", {"default": {"settled": 7}})}},
             "b": {"running": {"p": _status("p", {"default": {"settled": 3}})}}}
    counters = job_counters(nodes, {("p", "default"): {"buried": 2, "rejected": 1}})
    assert counters == {("a", "p", "default", "done"): 7, ("b", "p", "default", "done"): 3,
                        ("", "p", "default", "failed"): 3}
    assert per_queue({key: 1.0 for key in counters}) == {("p", "default"):
                                                         {"done": 2.0, "failed": 1.0}}


def test_the_view_merges_nodes_and_shows_waiting_idle_and_paused_partitions():
    running_job = {"id": "j1", "name": "myapp.jobs:Report", "started_at": 1_000,
                   "record": "{}"}
    nodes = {
        "web-1": {"pid": 10, "running": {
            "billing": _status("billing", {
                "default": {"max_workers": 4, "consuming": True, "paused": False,
                            "running": [running_job], "waiting": ["{}"]}}),
            "emails": _status("emails", {"default": {"max_workers": 2, "idle": True,
                                                     "consuming": False}},
                              idle=True, paused=["default"]),
        }, "waiting": {}},
        "web-2": {"pid": 20, "running": {}, "waiting": {"billing": {"default": 3}}},
    }
    depths = {("billing", "default"): {"ready": 5, "buried": 1, "rejected": 0}}
    view = build(nodes, depths, {("billing", "default"): {"done": 2.5, "failed": 0.5}}, 30.0,
                 None, Settings(node_name="web-1", http_token="t"))
    assert view["actions"] is True and view["node"] == "web-1"
    assert [(n["name"], n["waiting"], n["idle"]) for n in view["nodes"]] == [
        ("web-1", [], ["emails"]), ("web-2", ["billing"], [])]
    billing, emails = view["partitions"]
    assert billing["nodes"]["web-2"]["state"] == "waiting"
    assert billing["nodes"]["web-1"]["state"] == "running"
    [default] = billing["queues"]
    assert (default["workers"], default["busy"], default["held"]) == (7, 1, 1)
    assert (default["ready"], default["buried"], default["rejected"]) == (5, 1, 0)
    assert (default["done_per_second"], default["failed_per_second"]) == (2.5, 0.5)
    assert emails["nodes"]["web-1"]["state"] == "idle"
    assert emails["queues"][0]["paused"] is True and emails["queues"][0]["idle_on"] == ["web-1"]
    [job] = view["running"]
    assert (job["id"], job["node"], job["partition"], job["queue"]) == (
        "j1", "web-1", "billing", "default")
    assert job["age_seconds"] > 0


def test_no_rates_are_shown_before_the_window_has_two_samples():
    nodes = {"a": {"running": {"p": _status("p", {"default": {"max_workers": 1}})}}}
    view = build(nodes, {}, {}, 0.0, None, Settings(node_name="a"))
    assert view["partitions"][0]["queues"][0]["done_per_second"] is None
    assert view["actions"] is False


def test_other_read_only_pages_can_be_mounted_beside_the_page():
    """SPEC: the page "may share the metrics server": /metrics mounts on the same port."""
    settings = Settings(http_port=9999, http_token="t")
    routes = Routes(settings, mounts={"/metrics": lambda: (b"roger_up 1\n", "text/plain")})
    host = {"host": "127.0.0.1:9999"}
    answer = routes(Request("GET", "/metrics", host))
    assert (answer.status, answer.body, answer.content_type) == (200, b"roger_up 1\n",
                                                                  "text/plain")
    assert routes(Request("POST", "/metrics", host)).status == 405


def test_periodic_jobs_are_listed_when_this_roger_has_them(monkeypatch):
    @dataclasses.dataclass
    class Entry:
        name: str
        cron: str
        next_run: str

    monkeypatch.setattr(info, "periodic", lambda settings=None: [Entry("nightly", "0 3 * * *",
                                                                       "2026-12-07T03:00")],
                        raising=False)
    assert snapshot._periodic(Settings()) == [{"name": "nightly", "cron": "0 3 * * *",
                                               "next_run": "2026-12-07T03:00"}]
    monkeypatch.delattr(info, "periodic")
    assert snapshot._periodic(Settings()) is None


def test_the_token_never_shows_in_settings_repr_or_errors():
    from pydantic import ValidationError

    from roger.settings import describe_validation_error
    assert "s3cret" not in repr(Settings(http_token="s3cret"))
    with pytest.raises(ValidationError) as caught:
        Settings(http_token=["s3cret"], http_port=0)
    text = describe_validation_error(caught.value)
    assert "http_port" in text and "http_token" in text and "s3cret" not in text
