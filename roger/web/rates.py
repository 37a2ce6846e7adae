"""Rates over the last minute, from cumulative counters sampled as the page refreshes.

`RateWindow` keeps the samples of the last `WINDOW` seconds and turns them
into per-second rates the way Prometheus's ``rate()`` does: a counter that
goes down was reset (a consumer that exited and came back), and counts from
zero again.

Where the counters come from is one function, `job_counters`, the hook to
wire the node's job counters (the Prometheus metrics' ``roger_jobs_total``)
into once they exist. Until then it derives them from what every node's
status already says:

- *done*: the jobs each consumer settled (`settled` in its status), every
  outcome included, so failures that were retried count here too;
- *failed*: the growth of the queue's buried and rejected queues (a job that
  failed for good), which a retry or a replay brings down again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any

__all__ = ["RateWindow", "job_counters"]

WINDOW = 60.0  # seconds: "per second over the last minute"

# (node, partition, queue, outcome) -> a counter that only grows (but for resets)
Counters = dict[tuple[str, str, str, str], int]


def job_counters(nodes: Mapping[str, dict], depths: Mapping[tuple[str, str], dict]) -> Counters:
    """Cumulative done and failed counts, from `roger.info.nodes()` and the queues' depths.

    Returns ``{(node, partition, queue, "done" | "failed"): count}``. A node
    that serves the page or metrics counts settlements in its root (the
    metrics' totals, which survive idle queues and crashed consumers): its
    status gives each queue ``"jobs": {"done", "failed"}``, failed meaning
    every attempt that ended in error. For a node that does not, done is
    what its live consumers settled, and failed the growth of the buried
    and rejected queues. `depths` maps ``(partition, queue)`` to
    `roger.info.queue_depths`.
    """
    out: Counters = {}
    counted: set[tuple[str, str]] = set()
    for node, status in nodes.items():
        for partition, entry in (status.get("running") or {}).items():
            for queue, info in (entry.get("queues") or {}).items():
                if not isinstance(info, dict):
                    continue
                jobs = info.get("jobs")
                if isinstance(jobs, dict):
                    out[(node, partition, queue, "done")] = jobs.get("done", 0)
                    out[(node, partition, queue, "failed")] = jobs.get("failed", 0)
                    counted.add((partition, queue))
                elif isinstance(info.get("settled"), int):
                    out[(node, partition, queue, "done")] = info["settled"]
    for (partition, queue), depth in depths.items():
        if (partition, queue) not in counted:
            failed = (depth.get("buried") or 0) + (depth.get("rejected") or 0)
            out[("", partition, queue, "failed")] = failed
    return out


class RateWindow:
    """Samples of counters over the last `window` seconds; `rates()` per key and second."""

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.window = window
        self.clock = clock
        self.samples: deque[tuple[float, dict[Hashable, int]]] = deque()
        self.lock = threading.Lock()  # the server's threads share one window

    def add(self, counters: Mapping[Hashable, int]) -> None:
        """Record the counters' values now, and forget samples older than the window."""
        now = self.clock()
        with self.lock:
            self.samples.append((now, dict(counters)))
            # One sample older than the window stays: the rate spans it all.
            while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
                self.samples.popleft()

    def span(self) -> float:
        """Seconds the samples cover (0 until there are two)."""
        with self.lock:
            return self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0

    def rates(self) -> dict[Hashable, float]:
        """Per-second increase of each key over the samples (a key seen once has rate 0)."""
        with self.lock:
            samples = list(self.samples)
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return {}
        increase: dict[Hashable, float] = {}
        for (_, before), (_, after) in zip(samples, samples[1:], strict=False):
            for key, value in after.items():
                previous = before.get(key)
                # Down means reset (counted from zero); new means it began now.
                grew = value if previous is not None and value < previous else (
                    value - previous if previous is not None else 0)
                increase[key] = increase.get(key, 0.0) + grew
        seconds = samples[-1][0] - samples[0][0]
        return {key: total / seconds for key, total in increase.items()}


def per_queue(rates: Mapping[Any, float]) -> dict[tuple[str, str], dict[str, float]]:
    """Sum `RateWindow.rates()` of `job_counters` keys per (partition, queue) and outcome."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (_node, partition, queue, outcome), rate in rates.items():
        entry = out.setdefault((partition, queue), {"done": 0.0, "failed": 0.0})
        entry[outcome] = entry.get(outcome, 0.0) + rate
    return out
