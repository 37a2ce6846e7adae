"""What every benchmark shares: the run's configuration, names and statistics."""

from __future__ import annotations

import os
import statistics
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.baseline import Baseline

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


class BenchError(RuntimeError):
    """A run could not be measured (a peer died, a wait ran out): the sample is dropped."""


@dataclass(frozen=True)
class Config:
    """Sizes of one invocation; `quick` shrinks everything to a few minutes in all."""

    quick: bool
    repeat: int
    throughput_jobs: int
    enqueue_single: int
    enqueue_bulk: int
    latency_jobs: int
    scale_tenants: int  # partitions of the "thousand tenants" node (scale)
    scale_jobs: int
    broker_url: str = BROKER_URL
    # One id per invocation: every queue and node name of the run carries it,
    # so leftovers of a crashed run never collide with (or get counted by) a new one.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # `--baseline REV`: roger at REV, run beside today's (see benchmarks.baseline).
    baseline: Baseline | None = None

    @classmethod
    def make(cls, quick: bool, repeat: int | None = None) -> Config:
        if quick:
            return cls(quick=True, repeat=repeat or 1, throughput_jobs=2_000,
                       enqueue_single=200, enqueue_bulk=2_000, latency_jobs=100,
                       scale_tenants=100, scale_jobs=2_000)
        return cls(quick=False, repeat=repeat or 3, throughput_jobs=20_000,
                   enqueue_single=1_000, enqueue_bulk=10_000, latency_jobs=500,
                   scale_tenants=1_000, scale_jobs=10_000)

    def name(self, *parts: object) -> str:
        """A queue/partition name unique to this run (letters, digits, '_' and '-' only)."""
        return "-".join(["bench", self.run_id, *(str(p) for p in parts)])


class Samples:
    """Measurements over the repeats: system -> metric -> one value per repeat.

    Values stay in repeat order, so that ratios can pair the systems of the
    same repeat (they ran minutes apart at most, under the same noise).
    """

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float | None]]] = {}
        self.errors: dict[str, list[str]] = {}

    def add(self, system: str, metrics: dict[str, float], repeat: int) -> None:
        per_metric = self.values.setdefault(system, {})
        for metric, value in metrics.items():
            column = per_metric.setdefault(metric, [])
            column.extend([None] * (repeat + 1 - len(column)))
            column[repeat] = value

    def fail(self, system: str, error: str) -> None:
        self.errors.setdefault(system, []).append(error)

    def get(self, system: str, metric: str) -> list[float]:
        return [v for v in self.values.get(system, {}).get(metric, []) if v is not None]

    def ratios(self, num: str, den: str, metric: str) -> list[float]:
        """num/den per repeat where both were measured."""
        a = self.values.get(num, {}).get(metric, [])
        b = self.values.get(den, {}).get(metric, [])
        return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


@dataclass(frozen=True)
class Summary:
    """Median and range of a few samples."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary | None:
        values = sorted(values)
        if not values:
            return None
        return cls(statistics.median(values), values[0], values[-1], len(values))


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of unsorted values."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def rates(n: int, t0: float, done_times: list[float]) -> dict[str, float]:
    """jobs/s from `t0` to the last completion, and in steady state.

    Steady state is the 10th to the 90th percentile of completions: it
    leaves out start-up (process launch, connect, forks) and the tail.
    """
    times = sorted(done_times)
    first, last = times[int(0.1 * (len(times) - 1))], times[int(0.9 * (len(times) - 1))]
    steady_jobs = int(0.9 * (len(times) - 1)) - int(0.1 * (len(times) - 1))
    return {
        "from_start": n / (times[-1] - t0),
        "steady": steady_jobs / (last - first) if last > first else float("nan"),
    }
