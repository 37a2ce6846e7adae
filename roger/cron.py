"""Cron expressions: parse one, and find when it next fires in a time zone.

Pure logic, no clock: every time is passed in. `Cron.parse` reads

- five fields, ``minute hour day-of-month month day-of-week``, as crontab(5);
- or six, with a leading seconds field (``*/10 * * * * *``: every ten
  seconds), as Quartz, Spring and sidekiq-cron write it;
- or a macro: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
  ``@daily`` (``@midnight``), ``@hourly``.

A field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or
``a/n`` (from a to the field's end), or a comma list of those. Months and
weekdays take names (``jan``-``dec``, ``sun``-``sat``, any case); weekday 0
and 7 are Sunday. As in Vixie cron, when both day fields are restricted
(neither starts with ``*``) a day matches if either does.

Daylight saving time (`Cron.next_after`) follows Vixie/Debian cron, the
rule cron users know:

- an entry whose hour field starts with ``*`` (``*``, ``*/2``) follows
  real time: a local time the clocks skip does not exist and is not
  fired; a local time that happens twice fires both times;
- any other entry (fixed hours, such as ``0 3 * * *``) fires once a day
  whatever the clocks do: a local time the clocks skip fires at the moment
  they jump (``30 2 * * *`` in Europe/Amsterdam fires at 03:00 CEST on the
  last Sunday of March), and a local time that happens twice fires at its
  first occurrence only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

__all__ = ["Cron", "CronError"]

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name: i for i, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
WEEKDAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (name, lowest, highest, names) of the six fields, seconds first.
FIELDS = (("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}),
          ("day-of-month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day-of-week", 0, 7, WEEKDAYS))
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # at most
# Years to search for the next match: a 29 February that must also be a
# given weekday is the rarest match (Vixie's OR makes even that common).
SEARCH_YEARS = 30
# Longer than any clock change in the time zone database (2 h at most).
SHIFT_MARGIN = timedelta(hours=3)


class CronError(ValueError):
    """A cron expression that cannot be read, or that never fires."""


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the values each field allows."""

    expr: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    day_star: bool  # the day-of-month field starts with "*"
    weekday_star: bool
    hour_star: bool  # follows real time across clock changes (see the module doc)

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Read `expr`; raises `CronError` saying which field is wrong and why."""
        if not isinstance(expr, str):
            raise CronError(f"a cron expression must be a string, got {expr!r}")
        text = MACROS.get(expr.strip().lower(), expr)
        parts = text.split()
        if len(parts) == 5:
            parts = ["0", *parts]
        elif len(parts) != 6:
            raise CronError(f"invalid cron expression {expr!r}: expected 5 fields (minute "
                            "hour day-of-month month day-of-week), 6 with seconds first, or "
                            f"a macro such as @daily; got {len(parts)}")
        values = []
        for text_field, (name, lo, hi, names) in zip(parts, FIELDS, strict=True):
            try:
                values.append(_parse_field(text_field.lower(), lo, hi, names))
            except ValueError as e:
                raise CronError(f"invalid cron expression {expr!r}: {name} field "
                                f"{text_field!r}: {e}") from None
        weekdays = frozenset(d % 7 for d in values[5])
        cron = cls(expr, *values[:5], weekdays, parts[3].startswith("*"),
                   parts[5].startswith("*"), parts[2].startswith("*"))
        cron._check_possible()
        return cron

    def _check_possible(self) -> None:
        if self.day_star or not self.weekday_star:
            return  # every month has each weekday
        if not any(d <= DAYS_IN_MONTH[m - 1] for m in self.months for d in self.days):
            raise CronError(f"cron expression {self.expr!r} never fires: no month it "
                            "allows has the days it allows")

    def matches_day(self, day: date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.day_star or self.weekday_star:
            return in_month and in_week  # the starred one allows every day
        return in_month or in_week

    def next_local(self, after: datetime) -> datetime | None:
        """The first matching wall-clock time strictly after `after` (both naive)."""
        t = after.replace(microsecond=0) + timedelta(seconds=1)
        last_year = after.year + SEARCH_YEARS
        while t.year <= last_year:
            if t.month not in self.months:
                t = datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
            elif not self.matches_day(t.date()):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            elif t.hour not in self.hours:
                hour = _next_value(self.hours, t.hour)
                t = (t.replace(hour=hour, minute=0, second=0) if hour is not None
                     else datetime(t.year, t.month, t.day) + timedelta(days=1))
            elif t.minute not in self.minutes:
                minute = _next_value(self.minutes, t.minute)
                t = (t.replace(minute=minute, second=0) if minute is not None
                     else t.replace(minute=0, second=0) + timedelta(hours=1))
            elif t.second not in self.seconds:
                second = _next_value(self.seconds, t.second)
                t = (t.replace(second=second) if second is not None
                     else t.replace(second=0) + timedelta(minutes=1))
            else:
                return t
        return None

    def next_after(self, after: datetime, tz: tzinfo = UTC) -> datetime | None:
        """The first firing strictly after the aware time `after`, in UTC, or None (never).

        Wall-clock times are read in `tz` (a `zoneinfo.ZoneInfo`), with the
        daylight-saving rules of the module doc.
        """
        after = after.astimezone(UTC)
        local = after.astimezone(tz).replace(tzinfo=None)
        cursor = local
        if _is_repeated(local, tz):
            # The second occurrence of an earlier wall time may still be ahead.
            cursor = local - SHIFT_MARGIN
        best: datetime | None = None
        while (candidate := self.next_local(cursor)) is not None:
            instants, ordinary = self._instants(candidate, tz)
            if best is not None and ordinary and instants[0] > best:
                return best  # wall times and instants run in step again from here
            for instant in instants:
                if instant > after and (best is None or instant < best):
                    best = instant
            cursor = candidate
        return best

    def _instants(self, wall: datetime, tz: tzinfo) -> tuple[list[datetime], bool]:
        """When a matching wall time fires, and whether it is an ordinary one.

        Ordinary: it happens exactly once. A skipped or repeated time follows
        the daylight-saving rules of the module doc.
        """
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:
            return [first], True
        if first < second:  # repeated: the clocks went back
            return ([first, second] if self.hour_star else [first]), False
        # Skipped: the clocks went forward over it (fold=0 reads it with the
        # offset before the jump, so it lands after the jump).
        if self.hour_star:
            return [], False
        return [_jump(second, first, tz)], True


def _next_value(allowed: frozenset[int], current: int) -> int | None:
    """The smallest allowed value above `current`, or None (the next unit rolls over)."""
    above = [v for v in allowed if v > current]
    return min(above) if above else None


def _is_repeated(wall: datetime, tz: tzinfo) -> bool:
    return wall.replace(tzinfo=tz, fold=0).utcoffset() != wall.replace(
        tzinfo=tz, fold=1).utcoffset()


def _jump(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The instant in (before, after] at which `tz` takes the offset it has at `after`."""
    offset = after.astimezone(tz).utcoffset()
    lo, hi = before, after
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi


def _parse_field(text: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = _number(step_text, names={}) if slash else 1
        if step < 1:
            raise ValueError(f"step {step_text!r} must be 1 or more")
        if span == "*":
            first, last = lo, hi
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _number(a, names), _number(b, names)
            if first > last:
                raise ValueError(f"range {span!r} runs backwards")
        else:
            first = _number(span, names)
            last = hi if slash else first
        for value in (first, last):
            if not lo <= value <= hi:
                raise ValueError(f"{value} is out of range {lo}-{hi}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(text: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        expected = "a number" + (" or a name such as " + next(iter(names)) if names else "")
        raise ValueError(f"{text!r} is not {expected}")
    return int(text)
