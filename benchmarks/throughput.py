"""throughput: N no-op jobs enqueued first, then drained by freshly started workers."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable

from benchmarks import rabbit
from benchmarks.common import BenchError, Config, Samples, rates
from benchmarks.report import Metric, Ratio, Section, progress
from benchmarks.systems import (
    CelerySystem,
    DramatiqSystem,
    KombuSystem,
    RogerSystem,
    System,
    log_path,
)
from benchmarks.tally import Tally

RQ, RC = "roger (quorum)", "roger (classic)"
KQ, KC = "raw kombu (quorum)", "raw kombu (classic)"

FACTORIES: list[tuple[str, Callable[[Config, str], System]]] = [
    (RQ, lambda cfg, tag: RogerSystem(cfg, tag, "quorum")),
    (RC, lambda cfg, tag: RogerSystem(cfg, tag, "classic")),
    ("celery", CelerySystem),
    ("dramatiq", DramatiqSystem),
    (KC, lambda cfg, tag: KombuSystem(cfg, tag, "classic")),
    (KQ, lambda cfg, tag: KombuSystem(cfg, tag, "quorum")),
]

METRICS = [
    Metric("steady", "steady jobs/s"),
    Metric("from_start", "jobs/s from start"),
    Metric("node_start", "Node.start() s", "{:.2f}"),
    Metric("enqueue", "enqueue msg/s"),
]


def measure(system: System, n: int, workdir: str) -> dict[str, float]:
    """Fill the queue with `n` jobs, start the workers, time until every job ran."""
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    try:
        bodies = [rabbit.body_of(i, out) for i in range(n)]
        t = time.perf_counter()
        system.enqueue_all(bodies)
        enqueue_rate = n / (time.perf_counter() - t)
        # Unconfirmed publishers (Celery, Dramatiq, the raw feed) may still have
        # messages in flight: start the workers only on a full queue.
        rabbit.wait_total(system.url, system.queue_names(), n)
        proc = system.start(log_path(workdir, system, "throughput"))
        metrics: dict[str, float] = {"enqueue": enqueue_rate}
        if isinstance(system, RogerSystem):
            info = system.wait_ready()
            metrics["node_start"] = info["ready"] - info["start"]
        tally = Tally(out)
        tally.wait(n, timeout=120 + n / 100, alive=proc.alive)
        metrics |= rates(n, proc.started, list(tally.done.values()))
        if tally.duplicates:
            progress(f"  note: {tally.duplicates} jobs ran twice (redelivered)")
        return metrics
    finally:
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


def run_systems(cfg: Config, workdir: str, name: str, n: int,
                factories: list[tuple[str, Callable[[Config, str], System]]]) -> Samples:
    """Every system once per repeat, interleaved (rotating the order) so drift hits all alike."""
    samples = Samples()
    for rep in range(cfg.repeat):
        order = factories[rep % len(factories):] + factories[:rep % len(factories)]
        for label, make in order:
            try:
                metrics = measure(make(cfg, f"{name[:2]}{rep}{len(samples.values)}"), n, workdir)
            except Exception as e:  # one failed sample must not lose the others
                e = e if isinstance(e, BenchError) else BenchError(f"{type(e).__name__}: {e}")
                progress(f"{name} {rep + 1}/{cfg.repeat} {label}: FAILED: {e}")
                samples.fail(label, str(e))
                continue
            samples.add(label, metrics, rep)
            progress(f"{name} {rep + 1}/{cfg.repeat} {label}: steady {metrics['steady']:,.0f}/s,"
                     f" from start {metrics['from_start']:,.0f}/s")
    return samples


def run(cfg: Config, workdir: str) -> Section:
    n = cfg.throughput_jobs
    samples = run_systems(cfg, workdir, "throughput", n, FACTORIES)
    ratios = []
    for roger, ceiling in ((RQ, KQ), (RC, KC)):
        ratios += [Ratio(roger, "dramatiq", "steady", 1.5), Ratio(roger, "celery", "steady"),
                   Ratio(roger, ceiling, "steady", 0.8), Ratio(roger, "dramatiq", "from_start"),
                   Ratio(roger, "celery", "from_start"), Ratio(roger, ceiling, "from_start")]
    ratios.append(Ratio(RC, KQ, "steady"))
    notes = [
        f"{n:,} no-op jobs with a small dict argument, enqueued first, then processed by "
        "freshly started workers: roger 1 partition x 1 queue x 4 workers; Celery prefork "
        "-c 4 (acks_late, prefetch multiplier 1, no result backend); Dramatiq --processes 4 "
        "--threads 1; raw kombu: one consumer, one connection, prefetch 100, ack per message.",
        "Queue types: `roger (quorum)` is roger's default; `roger (classic)` uses "
        "`Settings(queue_type=\"classic\")`, the type Celery and Dramatiq use. The ceiling is "
        "measured on both types; each roger variant is compared with the ceiling of its type.",
        "Every job appends its index to a per-process file; a run ends when every index was "
        "seen (no duplicates counted). *From start*: jobs/s from launching the worker process "
        "(interpreter start and imports included, for every system) to the last job. "
        "*Steady*: jobs/s between the 10th and the 90th percentile of completions.",
        "*Node.start() s*: roger only, how long `roger.Node(settings).start()` took to "
        "return (partition consuming). *enqueue msg/s*: the filling phase, for context "
        "(roger: `enqueue_many` in batches of 1,000, confirmed; peers: unconfirmed).",
    ]
    return Section("throughput", "Throughput", samples, METRICS, ratios, notes)
