"""The alternative the metrics A/B measures: `prometheus_client`'s multiprocess mode.

Not roger's design (see `roger.metrics`): a prototype of the other option
issue 16 names, for `benchmarks.metrics` only. Each consumer process counts
straight into `prometheus_client` metrics whose values live in memory-mapped
files under ``$PROMETHEUS_MULTIPROC_DIR`` (one file per process and metric
type), which a scrape would merge. `MultiprocTally` stands in for
`roger.metrics.Tally` in the consumer: same `count`, and it never reports
up the tree.

``python -m benchmarks.peers.multiproc_tally SETTINGS.json`` runs
`benchmarks.peers.roger_node` with it; ``... --micro`` prints the cost of
one settlement's counting, in µs, for both designs (JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import timeit
from typing import Any

_metrics: dict[str, Any] = {}


def _families() -> dict[str, Any]:
    """The process's two metrics, made on first use (after the env var is set)."""
    if not _metrics:
        from prometheus_client import Counter, Histogram

        from roger.metrics import BUCKETS

        _metrics["jobs"] = Counter("roger_jobs", "Settled jobs.",
                                   ["partition", "queue", "job", "outcome"])
        _metrics["durations"] = Histogram("roger_job_duration_seconds", "Job run time.",
                                          ["partition", "queue", "job"], buckets=BUCKETS)
    return _metrics


class MultiprocTally:
    """`roger.metrics.Tally`'s interface, counting into multiprocess-mode metrics."""

    def __init__(self, partition: str, queue: str) -> None:
        self.partition, self.queue = partition, queue
        self.next_report = float("inf")
        metrics = _families()
        self.jobs, self.durations = metrics["jobs"], metrics["durations"]

    def count(self, job: str, outcome: str, ran_for: float | None = None) -> None:
        self.jobs.labels(self.partition, self.queue, job, outcome).inc()
        if ran_for is not None:
            self.durations.labels(self.partition, self.queue, job).observe(ran_for)

    def pending(self, gauges: tuple[int, int, int]) -> bool:
        return False  # the files are the report


def micro(number: int = 200_000) -> dict[str, float]:
    """µs per settlement (a count and a duration) for roger's tally and for multiprocess mode."""
    from roger.metrics import Tally

    tally = Tally("p", "default")
    mp = MultiprocTally("p", "default")
    out = {}
    for name, t in (("tally", tally), ("multiprocess", mp)):
        seconds = min(timeit.repeat(lambda t=t: t.count("benchmarks.jobs:Noop", "done", 0.0004),
                                    number=number, repeat=3))
        out[name] = seconds / number * 1e6
    return out


def main(argv: list[str]) -> int:
    directory = tempfile.mkdtemp(prefix="rogerprom")
    # Read when prometheus_client is first imported: before anything imports it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        if argv[1:] == ["--micro"]:
            print(json.dumps(micro()), flush=True)
            return 0
        import roger.partition.consumer as consumer
        from benchmarks.peers import roger_node

        consumer.Tally = MultiprocTally  # type: ignore[misc,assignment]
        return roger_node.main(argv)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
