"""`roger.cron`: reading cron expressions and the next firing, daylight saving time included.

Pure logic with an injected clock: every "now" is a datetime passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from roger.cron import Cron, CronError

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NEW_YORK = ZoneInfo("America/New_York")


def firings(expr: str, start: datetime, until: datetime, tz=UTC) -> list[datetime]:
    """Every firing of `expr` after `start` up to `until`, in UTC.

    UTC, not `tz`: Python compares and subtracts two times of one zone by
    their wall clocks, blind to a repeated hour.
    """
    cron, out, t = Cron.parse(expr), [], start
    while (t := cron.next_after(t, tz)) is not None and t <= until:
        out.append(t)
    return out


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def hm(times: list[datetime], tz=AMSTERDAM) -> list[str]:
    """The times as `tz`'s wall clock: day, hour, minute and UTC offset."""
    return [t.astimezone(tz).strftime("%d %H:%M%z") for t in times]


# ------------------------------------------------------------------ reading


def test_five_fields_every_minute_and_fixed_times():
    assert firings("* * * * *", utc(2026, 1, 1, 10, 0, 30), utc(2026, 1, 1, 10, 3)) == [
        utc(2026, 1, 1, 10, 1), utc(2026, 1, 1, 10, 2), utc(2026, 1, 1, 10, 3)]
    assert firings("0 3 * * *", utc(2026, 1, 1), utc(2026, 1, 3, 23)) == [
        utc(2026, 1, 1, 3), utc(2026, 1, 2, 3), utc(2026, 1, 3, 3)]


def test_lists_ranges_and_steps():
    times = firings("0,15-17,*/20 9 * * *", utc(2026, 1, 1), utc(2026, 1, 1, 23))
    assert [t.minute for t in times] == [0, 15, 16, 17, 20, 40]
    times = firings("10-30/10 9 * * *", utc(2026, 1, 1), utc(2026, 1, 1, 23))
    assert [t.minute for t in times] == [10, 20, 30]
    times = firings("50/5 9 * * *", utc(2026, 1, 1), utc(2026, 1, 1, 23))
    assert [t.minute for t in times] == [50, 55]


def test_month_and_weekday_names_in_any_case():
    # 2026-12-04 is a Friday.
    times = firings("0 9 * * MON-fri", utc(2026, 12, 4), utc(2026, 12, 9, 23))
    assert [t.day for t in times] == [4, 7, 8, 9]
    times = firings("0 0 1 jan,Jul *", utc(2026, 1, 1, 1), utc(2028, 1, 1))
    assert [(t.year, t.month) for t in times] == [(2026, 7), (2027, 1), (2027, 7), (2028, 1)]


def test_sunday_is_0_and_7():
    sundays = firings("0 12 * * 7", utc(2026, 12, 1), utc(2026, 12, 31))
    assert sundays == firings("0 12 * * 0", utc(2026, 12, 1), utc(2026, 12, 31))
    assert [t.day for t in sundays] == [6, 13, 20, 27]


def test_both_day_fields_restricted_match_either_as_in_vixie_cron():
    # The 1st and 15th of the month, and every Monday.
    times = firings("0 0 1,15 * mon", utc(2026, 11, 30, 1), utc(2026, 12, 31))
    assert [t.day for t in times] == [1, 7, 14, 15, 21, 28]
    # A day field starting with "*" (a step) counts as unrestricted, so both
    # must match (Vixie's quirk): the Mondays among the 1st, 11th, 21st, 31st.
    times = firings("0 0 */10 * mon", utc(2026, 12, 1), utc(2026, 12, 31))
    assert [t.day for t in times] == [21]


def test_six_fields_put_seconds_first():
    times = firings("*/20 * * * * *", utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 1, 5))
    assert [t.second for t in times] == [20, 40, 0]
    times = firings("30 0 3 * * *", utc(2026, 1, 1), utc(2026, 1, 2, 23))
    assert times == [utc(2026, 1, 1, 3, 0, 30), utc(2026, 1, 2, 3, 0, 30)]


@pytest.mark.parametrize(("macro", "same_as"), [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *")])
def test_macros(macro, same_as):
    a, b, t, u = Cron.parse(macro), Cron.parse(same_as), utc(2026, 1, 1, 0, 30), None
    for _ in range(5):
        t, u = a.next_after(t), b.next_after(u or t)
        assert t == u


def test_29_february_waits_for_a_leap_year():
    assert firings("0 0 29 2 *", utc(2026, 1, 1), utc(2033, 1, 1)) == [
        utc(2028, 2, 29), utc(2032, 2, 29)]


def test_next_after_is_strictly_after():
    cron = Cron.parse("0 3 * * *")
    assert cron.next_after(utc(2026, 1, 1, 3)) == utc(2026, 1, 2, 3)
    assert cron.next_after(utc(2026, 1, 1, 2, 59, 59, 999999)) == utc(2026, 1, 1, 3)


@pytest.mark.parametrize(("expr", "says"), [
    ("", "expected 5 fields"),
    ("* * * *", "expected 5 fields"),
    ("* * * * * * *", "expected 5 fields"),
    ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
    ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
    ("* * 0 * *", "day-of-month field '0'"),
    ("* * * 13 *", "month field '13'"),
    ("* * * * 8", "day-of-week field '8'"),
    ("* * * foo *", "'foo' is not a number or a name such as jan"),
    ("*/0 * * * *", "step '0' must be 1 or more"),
    ("5-1 * * * *", "range '5-1' runs backwards"),
    ("1,,2 * * * *", "minute field"),
    ("@reboot", "expected 5 fields"),
    ("0 0 31 2 *", "never fires"),
    ("0 0 30 2 *", "never fires"),
    ("60 * * * * *", "second field '60'"),
])
def test_bad_expressions_say_which_field_and_why(expr, says):
    with pytest.raises(CronError) as err:
        Cron.parse(expr)
    assert says in str(err.value)
    assert isinstance(err.value, ValueError)


def test_31st_fires_only_in_long_months():
    times = firings("0 0 31 * *", utc(2026, 1, 1), utc(2026, 12, 31, 1))
    assert [t.month for t in times] == [1, 3, 5, 7, 8, 10, 12]


# ------------------------------------------------- daylight saving time (DST)
# Europe/Amsterdam: 2026-03-29 02:00 CET -> 03:00 CEST (02:00-03:00 skipped);
# 2026-10-25 03:00 CEST -> 02:00 CET (02:00-03:00 happens twice).


def test_0_3_in_amsterdam_fires_once_on_the_night_the_clocks_go_forward():
    times = firings("0 3 * * *", utc(2026, 3, 27), utc(2026, 3, 31), AMSTERDAM)
    assert hm(times) == ["27 03:00+0100", "28 03:00+0100", "29 03:00+0200", "30 03:00+0200"]


def test_0_3_in_amsterdam_fires_once_on_the_night_the_clocks_go_back():
    times = firings("0 3 * * *", utc(2026, 10, 23), utc(2026, 10, 27), AMSTERDAM)
    assert hm(times) == ["23 03:00+0200", "24 03:00+0200", "25 03:00+0100", "26 03:00+0100"]
    # 23 h and 25 h apart around the changes, in real time.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [timedelta(hours=24), timedelta(hours=25), timedelta(hours=24)]


def test_a_skipped_fixed_time_fires_once_when_the_clocks_jump():
    times = firings("30 2 * * *", utc(2026, 3, 27), utc(2026, 3, 31), AMSTERDAM)
    assert hm(times) == ["27 02:30+0100", "28 02:30+0100", "29 03:00+0200", "30 02:30+0200"]
    # Every skipped minute of a fixed-hour entry lands on the jump, once.
    times = firings("*/15 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 29, 12), AMSTERDAM)
    assert hm(times) == ["29 03:00+0200"]


def test_a_repeated_fixed_time_fires_once_at_its_first_occurrence():
    times = firings("30 2 * * *", utc(2026, 10, 23), utc(2026, 10, 27), AMSTERDAM)
    assert hm(times) == ["23 02:30+0200", "24 02:30+0200", "25 02:30+0200", "26 02:30+0100"]
    # Asked from inside the repeated hour, after the first 02:30: tomorrow.
    after_first = datetime(2026, 10, 25, 2, 45, tzinfo=AMSTERDAM)  # fold=0: CEST
    nxt = Cron.parse("30 2 * * *").next_after(after_first, AMSTERDAM)
    assert nxt == utc(2026, 10, 26, 1, 30)
    second_pass = datetime(2026, 10, 25, 2, 15, fold=1, tzinfo=AMSTERDAM)  # CET
    assert Cron.parse("30 2 * * *").next_after(second_pass, AMSTERDAM) == nxt


def test_an_every_hour_entry_follows_real_time_across_both_changes():
    times = firings("*/30 * * * *", utc(2026, 10, 24, 23), utc(2026, 10, 25, 3), AMSTERDAM)
    assert hm(times) == ["25 01:30+0200", "25 02:00+0200", "25 02:30+0200", "25 02:00+0100",
                         "25 02:30+0100", "25 03:00+0100", "25 03:30+0100", "25 04:00+0100"]
    assert all(b - a == timedelta(minutes=30) for a, b in zip(times, times[1:], strict=False))
    times = firings("0 * * * *", utc(2026, 3, 28, 23), utc(2026, 3, 29, 3), AMSTERDAM)
    assert hm(times) == ["29 01:00+0100", "29 03:00+0200", "29 04:00+0200", "29 05:00+0200"]


def test_an_hourly_entry_asked_from_the_first_pass_of_the_repeated_hour():
    # 02:10 CEST: the next 05-past is 02:05 CET, 55 minutes later in real time.
    t = datetime(2026, 10, 25, 2, 10, tzinfo=AMSTERDAM)
    assert Cron.parse("5 * * * *").next_after(t, AMSTERDAM) == utc(2026, 10, 25, 1, 5)


def test_new_york_changes_at_2_am_too():
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    spring = firings("30 2 * * *", utc(2026, 3, 7), utc(2026, 3, 9, 12), NEW_YORK)
    assert hm(spring, NEW_YORK) == ["07 02:30-0500", "08 03:00-0400", "09 02:30-0400"]
    autumn = firings("30 1 * * *", utc(2026, 10, 31), utc(2026, 11, 2, 12), NEW_YORK)
    assert hm(autumn, NEW_YORK) == ["31 01:30-0400", "01 01:30-0400", "02 01:30-0500"]


def test_times_come_back_in_utc_and_in_order():
    times = firings("*/10 * * * *", utc(2026, 10, 24, 23), utc(2026, 10, 25, 3), AMSTERDAM)
    assert times == sorted(times) and len(set(times)) == len(times)
    cron = Cron.parse("*/10 * * * *")
    assert cron.next_after(utc(2026, 1, 1), AMSTERDAM).tzinfo is UTC


@pytest.mark.parametrize("expr", ["*/7 */5 * * *", "0 0 1,15 * mon", "15 3-5 */3 feb-apr *",
                                  "59 23 31 * *", "0 12 * * sat,sun", "30 1 1 1 *"])
def test_next_after_agrees_with_checking_every_minute(expr):
    cron = Cron.parse(expr)
    start, minutes = utc(2026, 1, 25), 120 * 24 * 60
    every = [start + timedelta(minutes=i) for i in range(1, minutes)]
    expected = [t for t in every if t.minute in cron.minutes and t.hour in cron.hours
                and t.month in cron.months and cron.matches_day(t.date())]
    assert firings(expr, start, every[-1]) == expected
