"""latency: jobs enqueued one by one, 5 ms apart, on an idle node.

Each job carries the wall-clock time just before its enqueue call and
records (perform start - that time). Driver, broker and workers share one
machine, hence one clock.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable

from benchmarks import rabbit
from benchmarks.common import Config, Summary, percentile
from benchmarks.report import Metric, Ratio, Section, baseline_note, baseline_ratios, interleaved
from benchmarks.systems import (
    CelerySystem,
    DramatiqSystem,
    RogerSystem,
    System,
    log_path,
    roger_rows,
)
from benchmarks.tally import Tally

INTERVAL = 0.005
WARM_UP = 10  # jobs run before the measured ones: workers forked, connections open
IDLE = 0.5  # seconds of quiet between warm-up and measurement
TARGET_P50_MS, TARGET_P99_MS = 1.5, 4.0

ROGER = ("roger (quorum)", "roger (classic)")
PEERS = [("celery", CelerySystem), ("dramatiq", DramatiqSystem)]


def factories(cfg: Config) -> list[tuple[str, Callable[[Config, str], System]]]:
    """roger on both queue types (each followed by its ``@REV`` twin with --baseline), peers."""
    return [*roger_rows(cfg, ROGER[0], queue_type="quorum"),
            *roger_rows(cfg, ROGER[1], queue_type="classic"), *PEERS]


def paced(send: Callable[[dict], None], out: str, first: int, count: int,
          interval: float) -> None:
    """Send jobs first..first+count-1 with `send(body)`, one every `interval` s on a
    fixed schedule; each body carries the time it was sent (``t``)."""
    due = time.monotonic()
    for i in range(first, first + count):
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = rabbit.body_of(i, out)
        body["t"] = time.time()
        send(body)
        due += interval


def measure(system: System, n: int, workdir: str) -> dict[str, float]:
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    try:
        proc = system.start(log_path(workdir, system, "latency"))
        if isinstance(system, RogerSystem):
            system.wait_ready()
        tally = Tally(out)
        # Warm-up jobs go last in index order (n..n+WARM_UP-1) and are not counted.
        paced(lambda body: system.send(body, "latency"), out, n, WARM_UP, 0.02)
        tally.wait(WARM_UP, timeout=120, alive=proc.alive, what="warm-up jobs")
        time.sleep(IDLE)
        paced(lambda body: system.send(body, "latency"), out, 0, n, INTERVAL)
        tally.wait(n + WARM_UP, timeout=60 + n * INTERVAL, alive=proc.alive)
        ms = [tally.values[i] * 1000 for i in range(n)]
        return {"p50": percentile(ms, 50), "p99": percentile(ms, 99),
                "mean": sum(ms) / n, "max": max(ms)}
    finally:
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


def run(cfg: Config, workdir: str) -> Section:
    n = cfg.latency_jobs
    runs = [(label, lambda tag, make=make: measure(make(cfg, tag), n, workdir))
            for label, make in factories(cfg)]
    samples = interleaved(cfg, "latency", runs,
                          lambda m: f"p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms")
    extra = ["| target | figure | median | met |", "|---|---|---|---|"]
    labels = [*ROGER, *(cfg.baseline.label(x) for x in ROGER)] if cfg.baseline else [*ROGER]
    for label in labels:
        for key, target in (("p50", TARGET_P50_MS), ("p99", TARGET_P99_MS)):
            summary = Summary.of(samples.get(label, key))
            if summary is not None:
                met = "yes" if summary.median <= target else "no"
                extra.append(f"| {key} <= {target:g} ms | {label} | {summary.median:.2f} ms "
                             f"| {met} |")
    notes = [
        f"An idle node (roger: 1 partition x 1 queue x 4 workers; Celery prefork -c 4; "
        f"Dramatiq 4 processes x 1 thread); {WARM_UP} untimed warm-up jobs, {IDLE:g} s of "
        f"quiet, then {n} jobs enqueued one by one, {INTERVAL * 1000:g} ms apart on a fixed "
        "schedule, with each system's plain single enqueue (roger `Job.enqueue`, which waits "
        "for the publisher confirm; Celery `apply_async`; Dramatiq `send`).",
        "Latency = perform start - the moment just before the enqueue call, in ms "
        "(one clock: everything runs on this machine). Lower is better, so a ratio "
        "roger / peer below 1 means roger starts jobs sooner.",
        *baseline_note(cfg),
    ]
    metrics = [Metric("p50", "p50 ms", "{:.2f}"), Metric("p99", "p99 ms", "{:.2f}"),
               Metric("mean", "mean ms", "{:.2f}"), Metric("max", "max ms", "{:.1f}")]
    # Lower is better here: a ratio below 1 means roger is faster.
    ratios = [Ratio(roger, peer, key) for roger in ROGER
              for peer in ("dramatiq", "celery") for key in ("p50", "p99")]
    ratios += baseline_ratios(cfg, list(ROGER), ["p50", "p99"])
    return Section("latency", "Latency", samples, metrics, ratios, notes, extra)
