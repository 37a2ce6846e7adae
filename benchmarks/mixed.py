"""mixed: choosing `prefetch_multiplier` (issue 13).

Two measurements at each multiplier of `MULTIPLIERS`, interleaved:

- throughput: the throughput benchmark's no-op backlog drained by
  1 partition x 1 queue x 4 workers, on quorum (roger's default) and classic
  queues: what a larger prefetch gains;
- the mixed workload: jobs arrive one by one at `RATE` per second on an idle
  node of 4 workers (quorum); `LONG_SHARE` of them (drawn with a fixed seed,
  so every run gets the same sequence) sleep `LONG_S` seconds, the rest are
  no-ops. Wait = perform start - the moment before `Job.enqueue`. What a
  larger prefetch costs: a no-op job must not wait behind a long one that
  was prefetched.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable

from benchmarks import throughput
from benchmarks.common import Config, Samples, Summary, percentile
from benchmarks.latency import paced
from benchmarks.report import Metric, Ratio, Section, interleaved, progress
from benchmarks.systems import RogerSystem, System, log_path
from benchmarks.tally import Tally

MULTIPLIERS = (1.0, 1.5, 2.0, 4.0)
RATE = 150.0  # jobs/s: on average 1.5 of the 4 workers sleep, and now and then all 4
LONG_SHARE, LONG_S = 0.01, 1.0
SEED = 13
WARM_UP = 10


def label(multiplier: float, queue_type: str = "quorum") -> str:
    return f"roger ({queue_type}), prefetch_multiplier {multiplier:g}"


def default_multiplier() -> float:
    """roger's default `prefetch_multiplier` (the one the goals judge)."""
    import roger

    return float(roger.Settings.model_fields["prefetch_multiplier"].default)


def plan(n: int) -> list[float]:
    """Each job's sleep: `LONG_S` for about `LONG_SHARE` of them, else 0; the same every run."""
    rng = random.Random(SEED)
    return [LONG_S if rng.random() < LONG_SHARE else 0.0 for _ in range(n)]


def measure(system: System, n: int, workdir: str) -> dict[str, float]:
    """The mixed workload on `system`: the no-op jobs' waits (ms), and the long ones'."""
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    sleeps = plan(n)
    try:
        proc = system.start(log_path(workdir, system, "mixed"))
        if isinstance(system, RogerSystem):
            system.wait_ready()
        tally = Tally(out)

        def send(body: dict) -> None:
            i = body["i"]
            system.send({**body, "sleep": sleeps[i] if i < n else 0.0}, "mixed")

        paced(send, out, n, WARM_UP, 0.02)  # warm-up jobs: indexes n.., not counted
        tally.wait(WARM_UP, timeout=120, alive=proc.alive, what="warm-up jobs")
        paced(send, out, 0, n, 1 / RATE)
        tally.wait(n + WARM_UP, timeout=60 + n / RATE + sum(sleeps), alive=proc.alive)
        short = [tally.values[i] * 1000 for i in range(n) if not sleeps[i]]
        long = [tally.values[i] * 1000 for i in range(n) if sleeps[i]]
        return {"p50": percentile(short, 50), "p99": percentile(short, 99),
                "max": max(short), "long_p50": percentile(long, 50) if long else float("nan")}
    finally:
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


def mixed_jobs(cfg: Config) -> int:
    return 1_000 if cfg.quick else 3_000


def run(cfg: Config, workdir: str) -> Section:
    if cfg.baseline is not None:
        progress("mixed: no baseline rows (a baseline node takes no prefetch_multiplier)")
    n = mixed_jobs(cfg)
    settings = [(m, {"prefetch_multiplier": m}) for m in MULTIPLIERS]
    runs: list[tuple[str, Callable[[str], dict[str, float]]]] = [
        (label(m), lambda tag, s=s: measure(RogerSystem(cfg, tag, settings=s), n, workdir))
        for m, s in settings]
    samples = interleaved(cfg, "mixed", runs, lambda m: f"no-op wait p50 {m['p50']:.2f} ms, "
                                                        f"p99 {m['p99']:.2f} ms")
    factories = [(label(m, qt), lambda c, tag, s=s, qt=qt: RogerSystem(c, tag, queue_type=qt,
                                                                        settings=s))
                 for qt in ("quorum", "classic") for m, s in settings]
    drains = throughput.run_systems(cfg, workdir, "mixed-throughput", cfg.throughput_jobs,
                                    factories)
    ratios = [Ratio(label(m), label(1.0), key) for m in MULTIPLIERS[1:] for key in ("p99",)]
    tp_metrics = [Metric("steady", "steady jobs/s"), Metric("from_start", "jobs/s from start"),
                  Metric("cpu_sut", "CPU µs/job, system"),
                  Metric("cpu_consumer", "CPU µs/job, consumer"),
                  Metric("cpu_broker", "CPU µs/job, RabbitMQ"), Metric("busy", "cores busy %")]
    tp_ratios = [Ratio(label(m, qt), label(1.0, qt), key) for qt in ("quorum", "classic")
                 for m in MULTIPLIERS[1:] for key in ("steady", "cpu_sut")]
    extra = ["### The same multipliers: throughput of a no-op backlog", "",
             f"{cfg.throughput_jobs:,} no-op jobs drained as in the throughput benchmark "
             "(1 partition x 1 queue x 4 workers).", ""]
    extra += Section("", "", drains, tp_metrics, tp_ratios).markdown().splitlines()[2:]
    notes = [
        f"An idle node of 1 partition x 1 queue x 4 workers (quorum); {WARM_UP} untimed "
        f"warm-up jobs, then {n:,} jobs enqueued one by one with `Job.enqueue`, "
        f"{RATE:g} per second on a fixed schedule; {LONG_SHARE:.0%} of them (a fixed random "
        f"draw, {sum(1 for s in plan(n) if s)} jobs) sleep {LONG_S:g} s, the rest are "
        "no-ops. *p50 / p99 / max*: the no-op jobs' wait, perform start - the moment before "
        "`Job.enqueue`, in ms; *long p50*: the sleeping jobs' wait.",
        "A ratio `x / prefetch_multiplier 1` of p99 below 1 means the no-op jobs waited "
        f"less. roger's default is {default_multiplier():g}.",
    ]
    metrics = [Metric("p50", "no-op p50 ms", "{:.2f}"), Metric("p99", "no-op p99 ms", "{:.2f}"),
               Metric("max", "no-op max ms", "{:.1f}"),
               Metric("long_p50", "long p50 ms", "{:.1f}")]
    section = Section("mixed", "Mixed workload: prefetch_multiplier", samples, metrics, ratios,
                      notes, extra)
    section.data["drains"] = drains
    return section


def summary(samples: Samples, system: str, key: str) -> Summary | None:
    return Summary.of(samples.get(system, key))
