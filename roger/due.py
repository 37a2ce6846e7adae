"""When a delayed job is due: `delay` and `at`, checked and turned into epoch milliseconds.

`job.enqueue(partition, delay=...)` and ``at=...`` (and `roger.enqueue_many`)
come here first; every bad value raises a clear error before anything is
published. The waiting itself happens in RabbitMQ (`roger.amqp.delay`).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

__all__ = ["MAX_DELAY", "due_ms", "delay_seconds"]

MAX_DELAY = 2 ** 28 - 1  # seconds (8.5 years): what the delay levels can hold


def due_ms(delay: Any, at: Any, now: float) -> int | None:
    """The due time in ms since the epoch for `delay` or `at`, or None when neither is given.

    `delay` is seconds (an int or float >= 0) or a `datetime.timedelta` >= 0;
    `at` is a timezone-aware `datetime` or epoch seconds (int or float); an
    `at` in the past is due now. `now` is the current epoch time in seconds.
    Raises `TypeError` for a value of the wrong type and `ValueError` for
    one out of range (negative, not finite, naive datetime, both given, or
    more than `MAX_DELAY` seconds away).
    """
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise ValueError("give either delay or at, not both")
    due = now + _delay_seconds(delay) if delay is not None else max(now, _at_seconds(at))
    if due - now > MAX_DELAY:
        hint = " (at is epoch seconds, not milliseconds)" if at is not None and due > 1e11 else ""
        raise ValueError(f"a job can be delayed at most {MAX_DELAY} seconds (8.5 years); "
                         f"this one is due in {due - now:.0f} s{hint}")
    # In whole ms, rounded down: the wait in RabbitMQ (`delay_seconds`, whole
    # seconds rounded up from the publish) then never ends before it.
    return math.floor(due * 1000)


def delay_seconds(due: int, now: float) -> int:
    """Whole seconds from `now` (epoch s) to `due` (epoch ms), rounded up; 0 when due."""
    return max(0, math.ceil(due / 1000 - now))


def _delay_seconds(delay: Any) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"delay must be seconds (int or float) or a datetime.timedelta, "
                        f"got {delay!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return seconds


def _at_seconds(at: Any) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"at must be a timezone-aware datetime (e.g. "
                             f"datetime.now(timezone.utc) + ...), got the naive {at!r}")
        return at.timestamp()
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        if not math.isfinite(at):
            raise ValueError(f"at must be finite epoch seconds, got {at!r}")
        return float(at)
    raise TypeError(f"at must be a timezone-aware datetime or epoch seconds, got {at!r}")
