"""What a consumer counts for Prometheus, and the report it sends up its process tree.

Jobs are settled in consumer processes, which exit when their queue falls
idle and restart after a crash. So a consumer keeps no totals: it counts
into a `Tally` (plain dicts, a microsecond a job) and sends the *deltas*,
with its gauges, as a `QueueReport` to its partition supervisor at most
every `REPORT_EVERY` seconds and once more when it exits. The partition
supervisor forwards reports to the root, which keeps the node's totals
(`roger.node.metrics_store`) for as long as the node runs: counters stay
monotonic across idle exits, consumer restarts and dormant partitions.
A consumer killed outright (SIGKILL) loses at most its last
`REPORT_EVERY` seconds of counts.

Nothing here imports `prometheus_client`: it is loaded only by the process
that serves the metrics (`roger.node.exposition`).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "OUTCOMES", "REPORT_EVERY", "QueueReport", "Tally", "outcome_of"]

# Seconds between two reports of a busy consumer: dashboards lag this much.
REPORT_EVERY = 1.0

# `roger_jobs_total`'s `outcome` label. One settlement counts once: a job
# killed for its time (timeout) or whose worker died (crashed) counts as
# that, whether it is then retried, buried or failed.
OUTCOMES = ("done", "failed", "retried", "buried", "cancelled", "timeout", "crashed",
            "rejected")

# `roger_job_duration_seconds` bucket bounds (le), from a no-op to an hour.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0, 300.0, 600.0, 1800.0, 3600.0)

_BY_DISPOSITION = {"done": "done", "failed": "failed", "retry": "retried", "bury": "buried",
                   "cancelled": "cancelled"}


def outcome_of(disposition: str, killed: str | None = None) -> str:
    """The `outcome` label of a settlement (see `roger.partition.policy`).

    `killed` is "timeout" or "crashed" when the job's worker was killed or died.
    """
    return killed or _BY_DISPOSITION[disposition]


@dataclass
class Histogram:
    """One label set's duration histogram: per-bucket counts (the last one is +Inf) and sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


@dataclass
class QueueReport:
    """A consumer's counts since its last report, and its gauges now (event to the root).

    `jobs` maps ``(job name, outcome)`` to a count, `durations` a job name to
    its histogram; `running` (jobs in workers), `workers` (live worker
    processes) and `unacked` (deliveries held, not yet acked) are gauges.
    """

    partition: str
    queue: str
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    durations: dict[str, Histogram] = field(default_factory=dict)
    running: int = 0
    workers: int = 0
    unacked: int = 0


class Tally:
    """A consumer's counts since it last reported (no totals: see the module's docstring)."""

    def __init__(self, partition: str, queue: str) -> None:
        self.partition, self.queue = partition, queue
        self.jobs: dict[tuple[str, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.gauges: tuple[int, int, int] = (0, 0, 0)  # as last reported
        self.next_report = 0.0  # monotonic time

    def __repr__(self) -> str:
        return f"<Tally {self.partition}/{self.queue}: {sum(self.jobs.values())} unreported>"

    def count(self, job: str, outcome: str, ran_for: float | None = None) -> None:
        """One settlement; `ran_for` is how long it ran in a worker (None: it never ran)."""
        key = (job, outcome)
        self.jobs[key] = self.jobs.get(key, 0) + 1
        if ran_for is not None:
            hist = self.durations.get(job)
            if hist is None:
                hist = self.durations[job] = Histogram()
            hist.observe(ran_for)

    def pending(self, gauges: tuple[int, int, int]) -> bool:
        """Whether a report would say something new."""
        return bool(self.jobs) or gauges != self.gauges

    def take(self, gauges: tuple[int, int, int], now: float) -> QueueReport:
        """The report of what was counted since the last one; starts counting afresh."""
        report = QueueReport(self.partition, self.queue, self.jobs, self.durations, *gauges)
        self.jobs, self.durations, self.gauges = {}, {}, gauges
        self.next_report = now + REPORT_EVERY
        return report
