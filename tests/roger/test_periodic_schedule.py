"""`roger.partition.periodic`: which slots are due, with an injected clock, and entry checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import testjobs  # noqa: F401  (registers the job classes the entries name)

import roger
from roger.partition.periodic import InvalidPeriodic, Schedule, check, job_id
from roger.settings import Settings


def settings(*entries: dict, partitions=None) -> Settings:
    return Settings(partitions=partitions or {"app": {"default": 1}},
                    periodic=[{"job": "testjobs:Record", "partition": "app", **e}
                              for e in entries])


def epoch(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


def run_clock(schedule: Schedule, start: float, end: float, step: float) -> list[tuple]:
    """Step a fake clock from `start` to `end`; every (entry, slot, missed) that fired."""
    state: dict = {}
    fired = []
    t = start
    while t <= end:
        due, _ = schedule.due(state, t)
        fired.extend((d.entry.name, d.slot, d.missed) for d in due)
        t += step
    return fired


def test_a_new_entry_starts_now_and_fires_its_next_slot_once():
    schedule = Schedule("app", settings({"name": "m", "cron": "* * * * *"}))
    state: dict = {}
    t0 = epoch(2026, 1, 1, 10, 0, 30)
    assert schedule.due(state, t0) == ([], True)  # seen first: nothing from the past
    assert state["m"] == {"covered": t0, "last": None}
    assert schedule.due(state, t0 + 10) == ([], False)
    due, changed = schedule.due(state, epoch(2026, 1, 1, 10, 1) + 0.2)
    assert changed and [(d.slot, d.missed) for d in due] == [(epoch(2026, 1, 1, 10, 1), 1)]
    assert schedule.due(state, epoch(2026, 1, 1, 10, 1) + 0.5) == ([], False)  # not twice
    assert state["m"]["last"] == epoch(2026, 1, 1, 10, 1)


def test_slots_missed_while_no_node_ran_fire_once_as_the_latest():
    schedule = Schedule("app", settings({"name": "m", "cron": "* * * * *"}))
    state = {"m": {"covered": epoch(2026, 1, 1, 10, 0, 1), "last": epoch(2026, 1, 1, 10)}}
    back = epoch(2026, 1, 1, 10, 3, 30)  # down across 10:01, 10:02 and 10:03
    due, _ = schedule.due(state, back)
    assert [(d.slot, d.missed) for d in due] == [(epoch(2026, 1, 1, 10, 3), 3)]
    assert schedule.due(state, back + 1) == ([], False)
    assert schedule.next_slot(back) == epoch(2026, 1, 1, 10, 4)


def test_a_coordinator_with_a_slower_clock_does_not_fire_a_slot_again():
    schedule = Schedule("app", settings({"name": "m", "cron": "* * * * *"}))
    # The previous coordinator's clock was 2 s ahead: it fired 10:01 at its 10:01:00.5.
    state = {"m": {"covered": epoch(2026, 1, 1, 10, 1) + 0.5, "last": epoch(2026, 1, 1, 10, 1)}}
    assert schedule.due(state, epoch(2026, 1, 1, 10, 0, 59)) == ([], False)
    assert schedule.due(state, epoch(2026, 1, 1, 10, 1, 1)) == ([], False)


def test_entries_of_other_partitions_are_not_this_ones():
    s = settings({"name": "a", "cron": "* * * * *"},
                 {"name": "b", "cron": "* * * * *", "partition": "other"},
                 partitions={"app": {}, "other": {}})
    assert [e.name for e in Schedule("app", s).entries] == ["a"]
    assert not Schedule("third", s)


@pytest.mark.parametrize(("start", "end", "nights"), [
    # Clocks forward on 2026-03-29, back on 2026-10-25 (Europe/Amsterdam).
    ((2026, 3, 27, 12), (2026, 3, 31, 12), [(3, 28, 2), (3, 29, 1), (3, 30, 1), (3, 31, 1)]),
    ((2026, 10, 23, 12), (2026, 10, 27, 12),
     [(10, 24, 1), (10, 25, 2), (10, 26, 2), (10, 27, 2)]),
])
def test_0_3_in_amsterdam_fires_once_a_night_across_clock_changes(start, end, nights):
    schedule = Schedule("app", settings({"name": "n", "cron": "0 3 * * *",
                                         "timezone": "Europe/Amsterdam"}))
    fired = run_clock(schedule, epoch(*start), epoch(*end), step=60.0)
    assert [s for _, s, _ in fired] == [epoch(2026, m, d, h) for m, d, h in nights]
    assert all(missed == 1 for _, _, missed in fired)


def test_a_repeated_hour_fires_an_hourly_entry_in_both_passes_and_a_fixed_one_once():
    schedule = Schedule("app", settings(
        {"name": "hourly", "cron": "30 * * * *", "timezone": "Europe/Amsterdam"},
        {"name": "fixed", "cron": "30 2 * * *", "timezone": "Europe/Amsterdam"}))
    # From 01:45 CEST to 03:45 CET, three hours of real time.
    fired = run_clock(schedule, epoch(2026, 10, 24, 23, 45), epoch(2026, 10, 25, 2, 45), 20.0)
    hourly = [s for n, s, _ in fired if n == "hourly"]
    fixed = [s for n, s, _ in fired if n == "fixed"]
    # 02:30 CEST, 02:30 CET, 03:30 CET
    assert hourly == [epoch(2026, 10, 25, 0, 30), epoch(2026, 10, 25, 1, 30),
                      epoch(2026, 10, 25, 2, 30)]
    assert fixed == [epoch(2026, 10, 25, 0, 30)]  # 02:30 CEST only


def test_listing_shows_last_and_next_run():
    schedule = Schedule("app", settings({"name": "m", "cron": "0 3 * * *"}))
    t = epoch(2026, 1, 1, 12)
    [listed] = schedule.listing({"m": {"covered": t, "last": epoch(2026, 1, 1, 3)}}, t)
    assert listed["name"] == "m" and listed["cron"] == "0 3 * * *"
    assert listed["last_run"] == epoch(2026, 1, 1, 3)
    assert listed["next_run"] == epoch(2026, 1, 2, 3)
    [unseen] = schedule.listing(None, t)
    assert unseen["last_run"] is None and unseen["next_run"] == epoch(2026, 1, 2, 3)


def test_a_periodic_job_id_names_its_entry_and_slot():
    [entry] = Schedule("app", settings({"name": "nightly-report", "cron": "0 3 * * *"})).entries
    assert job_id(entry, epoch(2026, 1, 1, 3)) == "periodic:nightly-report:1767236400"


@pytest.mark.parametrize(("entry", "says"), [
    ({"cron": "0 25 * * *"}, "hour field '25'"),
    ({"cron": "0 3 * * *", "job": "testjobs:Nope"}, "unknown job 'testjobs:Nope'"),
    ({"cron": "0 3 * * *", "partition": "elsewhere"}, "unknown partition 'elsewhere'"),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"cron": "0 3 * * *", "queue": "no-dashes"}, "invalid queue name"),
    ({"cron": "0 3 * * *", "args": {"at": {1, 2}}}, "args['at']"),
])
def test_check_names_the_bad_entry(entry, says):
    with pytest.raises(InvalidPeriodic) as err:
        check(settings({"name": "nightly-report", **entry}))
    assert "periodic entry 'nightly-report'" in str(err.value) and says in str(err.value)
    assert isinstance(err.value, roger.RogerError) and isinstance(err.value, ValueError)


def test_check_refuses_a_name_used_twice():
    with pytest.raises(InvalidPeriodic, match="'twice': the name is used twice"):
        check(settings({"name": "twice", "cron": "@daily"}, {"name": "twice", "cron": "@hourly"}))


def test_check_accepts_good_entries():
    entries = check(settings({"name": "a", "cron": "@daily", "timezone": "Europe/Amsterdam",
                              "queue": "reports", "args": {"x": 1}}))
    assert [e.name for e in entries] == ["a"]


def test_a_per_second_entry_down_for_a_year_catches_up_once_at_once():
    schedule = Schedule("app", settings({"name": "s", "cron": "* * * * * *"},
                                        {"name": "d", "cron": "0 3 * * *"}))
    state = {name: {"covered": epoch(2025, 1, 1), "last": None} for name in ("s", "d")}
    due, _ = schedule.due(state, epoch(2026, 1, 1, 12) + 0.5)
    by_name = {d.entry.name: d for d in due}
    assert by_name["s"].slot == epoch(2026, 1, 1, 12) and by_name["s"].missed == 10_000
    assert by_name["d"].slot == epoch(2026, 1, 1, 3)
    assert by_name["d"].missed == 366  # every night from 2025-01-01 to 2026-01-01
