"""The settle policy: what becomes of a job that ran, or could not, and which callbacks fire.

One function for every case, called by the worker (a job that returned or
raised: it holds the `before_run` state) and by the consumer (a job whose
worker was killed or died: no state survives)::

    outcome      disposition                                callbacks
    done         done                                       after_run
    error        retry, then bury; failed if not retryable  on_error (+ on_buried)
    timeout      same as error, reason "timeout"            on_error (+ on_buried)
    crashed      same as error, reason "worker_crashed"     on_error (+ on_buried)
    cancelled    cancelled                                  on_cancel

The backoff is `retry_levels` seconds: after its n-th failure a retryable
job waits ``retry_levels[n]`` seconds, then runs again with `retry_count`
n+1. After the last level it is buried, with the reason as its
``x-roger-reason`` header. Levels may repeat (``[5, 5, 5]``: a constant
backoff): they are looked up by retry count, never by delay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from roger.callbacks import Callbacks
from roger.record import Record

__all__ = ["Decision", "Outcome", "decide", "fire", "next_delay"]

Outcome = Literal["done", "error", "timeout", "crashed", "cancelled"]
Disposition = Literal["done", "failed", "retry", "bury", "cancelled"]

# The reason a failed job is buried with (header x-roger-reason).
REASONS = {"error": "error", "timeout": "timeout", "crashed": "worker_crashed"}


@dataclass(frozen=True)
class Decision:
    """How to settle a job: its disposition, why, and the callbacks to fire in order."""

    disposition: Disposition
    reason: str
    callbacks: tuple[str, ...]


def next_delay(retry_count: int, levels: Sequence[float]) -> float | None:
    """Seconds to wait before the next attempt, or None: bury the job.

    `retry_count` is how many retries the job has had; a job that failed
    for the first time has 0 and waits ``levels[0]``.
    """
    if 0 <= retry_count < len(levels):
        return levels[retry_count]
    return None


def decide(job: Record, outcome: Outcome, retry_levels: Sequence[float]) -> Decision:
    """The one place that turns an outcome into a disposition.

    >>> decide(job, "error", [1, 3]).disposition  # doctest: +SKIP
    'retry'
    """
    if outcome == "done":
        return Decision("done", "done", ("after_run",))
    if outcome == "cancelled":
        return Decision("cancelled", "cancelled", ("on_cancel",))
    reason = REASONS[outcome]
    if not job.retryable:
        return Decision("failed", reason, ("on_error",))
    if next_delay(job.retry_count, retry_levels) is not None:
        return Decision("retry", reason, ("on_error",))
    return Decision("bury", reason, ("on_error", "on_buried"))


def fire(callbacks: Callbacks, decision: Decision, partition: str, job: Record, *,
         result: Any = None, error: BaseException | None = None, traceback: str | None = None,
         state: Any = None) -> None:
    """Run the decision's callbacks with the arguments each one takes."""
    for name in decision.callbacks:
        if name == "after_run":
            callbacks.call(name, partition, job, result, state)
        elif name == "on_cancel":
            callbacks.call(name, partition, job)
        else:
            callbacks.call(name, partition, job, error, traceback, state)
