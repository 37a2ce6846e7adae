"""Periodic jobs: each slot of each entry enqueued once, by the partition's active coordinator.

The `periodic` setting lists the entries (`roger.settings.PeriodicEntry`).
A partition's entries live in its `CoordinatorCore`, in the coordinator
process or, while the partition is dormant, in the node's watcher; only the
*active* core enqueues (RabbitMQ's single active consumer on
``<partition>.global`` makes it one per cluster). Each entry's state is one
record in the partition's persisted state, ``{"covered": t, "last": s}``:
every slot up to the epoch time `t` is done, the last one fired was `s`.

The active core, when a slot is due: builds the job record, claims its
queue_key (a clash skips the slot, logged), moves `covered` to now, saves
the state through the persister, and only then publishes (confirmed) to
``<partition>-<queue>``. So a slot fires at most once, across failovers and
restarts of the whole cluster, and a coordinator killed between the save and
the publish loses that one slot (logged by nobody: the window is one
publish). Slots missed while no node ran fire once, as the latest of them,
when a coordinator is back: `covered` jumps to now.

A standby core does not know that it has become the active one until a
request reaches it. So every core, at each slot time, sends a ``tick``
request to the partition's queue unless it knows it is active: whoever is
active receives it, learns it, loads the state and fires what is due. A
node that starts sends one at once: slots missed while it was down fire
without waiting for the next one.

`check` validates the entries when a node starts.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from roger import registry
from roger.cron import Cron, CronError
from roger.errors import RogerError, UnknownJob
from roger.message import normalize_args
from roger.settings import PeriodicEntry, Settings, check_queue_name

__all__ = ["Entry", "InvalidPeriodic", "Schedule", "check", "describe"]

log = logging.getLogger("roger.periodic")

# Missed slots counted (to log them, and to name the latest) at most: a
# per-second entry down for a year must not keep the coordinator busy.
MAX_MISSED_COUNTED = 10_000


class InvalidPeriodic(RogerError, ValueError):
    """An entry of the `periodic` setting that cannot run; the message names it."""


@dataclass(frozen=True)
class Entry:
    """A checked periodic entry: its setting, parsed cron, time zone and job class."""

    spec: PeriodicEntry
    cron: Cron
    tz: ZoneInfo
    job_class: Any  # a registered roger.Job subclass

    @property
    def name(self) -> str:
        return self.spec.name

    def next_after(self, t: float) -> float | None:
        """The first slot strictly after epoch time `t`, or None (never again)."""
        nxt = self.cron.next_after(datetime.fromtimestamp(t, UTC), self.tz)
        return nxt.timestamp() if nxt is not None else None


def compile_entry(spec: PeriodicEntry, partitions: Collection[str] | None = None) -> Entry:
    """Check one entry; `InvalidPeriodic` naming it when its cron, zone, job or partition is bad.

    `partitions` are the ones the node serves (None: not checked).
    """
    where = f"periodic entry {spec.name!r}"
    try:
        cron = Cron.parse(spec.cron)
    except CronError as e:
        raise InvalidPeriodic(f"{where}: {e}") from None
    try:
        tz = ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidPeriodic(f"{where}: unknown time zone {spec.timezone!r} ({e})") from None
    try:
        job_class = registry.resolve(spec.job)
    except UnknownJob:
        raise InvalidPeriodic(f"{where}: unknown job {spec.job!r}: no such job class is "
                              "registered (is its module in the `imports` setting?)") from None
    if partitions is not None and spec.partition not in partitions:
        raise InvalidPeriodic(f"{where}: unknown partition {spec.partition!r}: it is not in "
                              f"this node's `partitions` ({', '.join(sorted(partitions))})")
    try:
        if spec.queue is not None:
            check_queue_name(spec.queue)
        normalize_args(spec.args)
    except (TypeError, ValueError) as e:
        raise InvalidPeriodic(f"{where}: {e}") from None
    return Entry(spec, cron, tz, job_class)


def check(settings: Settings) -> list[Entry]:
    """Every entry of `settings.periodic`, checked (after `imports`), or `InvalidPeriodic`."""
    seen: set[str] = set()
    entries = []
    for spec in settings.periodic:
        if spec.name in seen:
            raise InvalidPeriodic(f"periodic entry {spec.name!r}: the name is used twice")
        seen.add(spec.name)
        entries.append(compile_entry(spec, settings.partitions))
    return entries


@dataclass(frozen=True)
class Due:
    """A slot to fire now: the latest due slot of `entry`, standing for `missed` slots."""

    entry: Entry
    slot: float
    missed: int


class Schedule:
    """A partition's periodic entries: when the next slot comes, which are due.

    The state (`dict` name -> ``{"covered", "last"}``) is the coordinator's,
    passed in; every time is an epoch float passed in, so the rules can be
    tested with any clock.
    """

    def __init__(self, partition: str, settings: Settings) -> None:
        self.partition = partition
        self.entries: list[Entry] = []
        for spec in settings.periodic:
            if spec.partition != partition:
                continue
            try:
                self.entries.append(compile_entry(spec))
            except InvalidPeriodic as e:  # checked at node start: a job class gone since?
                log.error("[%s] %s; the entry is skipped", partition, e)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def next_slot(self, now: float) -> float | None:
        """The first slot of any entry strictly after `now` (when to tick)."""
        slots = [s for e in self.entries if (s := e.next_after(now)) is not None]
        return min(slots) if slots else None

    def due(self, state: dict[str, dict], now: float) -> tuple[list[Due], bool]:
        """The slots to fire at `now`, and whether `state` changed.

        An entry seen for the first time starts at `now`: its past slots
        never fire. `state` is updated as if every due slot fired (the
        caller saves it before publishing).
        """
        due, changed = [], False
        for entry in self.entries:
            record = state.get(entry.name)
            if record is None:
                state[entry.name] = {"covered": now, "last": None}
                changed = True
                continue
            covered = float(record.get("covered", now))
            slot = entry.next_after(covered)
            if slot is None or slot > now:
                continue
            latest = latest_slot(entry, slot, now)
            due.append(Due(entry, latest, count_slots(entry, slot, now)))
            state[entry.name] = {"covered": now, "last": latest}
            changed = True
        return due, changed

    def listing(self, state: dict[str, dict] | None, now: float) -> list[dict]:
        """Each entry with its last and next run (epoch seconds), for `roger.info.periodic`."""
        out = []
        for entry in self.entries:
            record = (state or {}).get(entry.name) or {}
            covered = float(record.get("covered", now))
            out.append({**entry.spec.model_dump(), "last_run": record.get("last"),
                        "next_run": entry.next_after(covered)})
        return out


def latest_slot(entry: Entry, first: float, now: float) -> float:
    """The last slot in [first, now] (`first` is a slot): looked for back from `now`.

    A window behind `now` that doubles until it holds a slot, then forward:
    a few steps, however many slots were missed (a per-second entry down
    for a year is 31 million).
    """
    span = 1.0
    while (start := max(now - span, first)) > first:
        slot = entry.next_after(start - 1e-6)
        if slot is not None and slot <= now:
            break
        span *= 2
    else:
        slot = first
    while (nxt := entry.next_after(slot)) is not None and nxt <= now:
        slot = nxt
    return slot


def count_slots(entry: Entry, first: float, now: float) -> int:
    """How many slots lie in [first, now], counted up to `MAX_MISSED_COUNTED`."""
    count, slot = 1, first
    while count < MAX_MISSED_COUNTED and (
            (slot := entry.next_after(slot)) is not None and slot <= now):
        count += 1
    return count


def job_id(entry: Entry, slot: float) -> str:
    """A periodic job's id: its entry and slot (``periodic:nightly-report:1767236400``)."""
    return f"periodic:{entry.name}:{int(slot)}"


def describe(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).isoformat(timespec="seconds")
