"""The node's metric totals, kept by the root for as long as the node runs.

Consumers send their counts as deltas (`roger.metrics.QueueReport`), through
their partition supervisor, to the root, which folds them in here. The root
outlives every consumer and partition process, so counters only ever grow,
whatever exits, crashes or sleeps below it. The process that serves the
metrics asks for a `Snapshot` (`MetricsSnapshot`, a call to the root) and
renders it (`roger.node.exposition`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from roger.metrics import OUTCOMES, Histogram, QueueReport

__all__ = ["MetricsSnapshot", "MetricsStore", "Snapshot"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """Call to the root: answers a `Snapshot` of the node's metrics."""


@dataclass
class Snapshot:
    """The node's metrics at one moment (picklable: it crosses the root's link).

    `jobs` maps ``(partition, queue, job, outcome)`` to a total, `durations`
    ``(partition, queue, job)`` to a histogram; `gauges` maps ``(partition,
    queue)`` to ``(running, workers, unacked)``. `partitions` is the node's
    configuration (partition -> queue -> max_workers), `waiting` the
    partitions that cannot start now.
    """

    node: str
    jobs: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    durations: dict[tuple[str, str, str], Histogram] = field(default_factory=dict)
    gauges: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)


class MetricsStore:
    """Totals folded from consumers' reports, and their latest gauges."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[tuple[str, str, str], Histogram] = {}
        self.gauges: dict[tuple[str, str], tuple[int, int, int]] = {}

    def __repr__(self) -> str:
        return f"<MetricsStore: {sum(self.jobs.values())} jobs counted>"

    def fold(self, report: QueueReport) -> None:
        """Add a consumer's counts to the totals; its gauges replace the previous ones."""
        p, q = report.partition, report.queue
        for (job, outcome), n in report.jobs.items():
            key = (p, q, job, outcome)
            if key not in self.jobs:
                self._start_series(p, q, job)
            self.jobs[key] += n
        for job, hist in report.durations.items():
            self.durations.setdefault((p, q, job), Histogram()).add(hist)
        self.gauges[(p, q)] = (report.running, report.workers, report.unacked)

    def _start_series(self, partition: str, queue: str, job: str) -> None:
        """Every outcome of a job seen for the first time, at 0.

        So the first failure of a kind shows as 0 -> 1: an alert on
        ``increase(roger_jobs_total{outcome="buried"}[5m]) > 0`` sees it,
        where a series born at 1 would look unchanged.
        """
        outcomes = ("rejected",) if job == "" else [o for o in OUTCOMES if o != "rejected"]
        for outcome in outcomes:
            self.jobs.setdefault((partition, queue, job, outcome), 0)

    def partition_gone(self, partition: str) -> None:
        """Its processes are gone (stopped, crashed, dormant): nothing runs there now."""
        for key in self.gauges:
            if key[0] == partition:
                self.gauges[key] = (0, 0, 0)

    def totals(self, partition: str, queue: str) -> dict[str, int]:
        """A queue's settlements so far: ``{"done": n, "failed": attempts that did not succeed}``.

        Failed counts every attempt that ended in error: retried, failed,
        buried, timed out, crashed or rejected (a cancelled job is neither).
        """
        done = failed = 0
        for (p, q, _, outcome), count in self.jobs.items():
            if p == partition and q == queue:
                if outcome == "done":
                    done += count
                elif outcome != "cancelled":
                    failed += count
        return {"done": done, "failed": failed}

    def snapshot(self, node: str, partitions: dict[str, dict[str, int]],
                 waiting: set[str]) -> Snapshot:
        return Snapshot(node, dict(self.jobs), copy.deepcopy(self.durations), dict(self.gauges),
                        copy.deepcopy(partitions), set(waiting))
