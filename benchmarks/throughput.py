"""throughput: N no-op jobs enqueued first, then drained by freshly started workers."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable

from benchmarks import procs, rabbit
from benchmarks.common import Config, Samples, rates
from benchmarks.report import (
    Metric,
    Ratio,
    Section,
    baseline_note,
    baseline_ratios,
    interleaved,
    progress,
)
from benchmarks.systems import (
    CelerySystem,
    DramatiqSystem,
    KombuSystem,
    RogerSystem,
    System,
    log_path,
    roger_rows,
)
from benchmarks.tally import Tally

RQ, RC = "roger (quorum)", "roger (classic)"
KQ, KC = "raw kombu (quorum)", "raw kombu (classic)"
# The ceiling at roger's own prefetch (its 4 workers): what the window alone allows.
KQ4, KC4 = "raw kombu, prefetch 4 (quorum)", "raw kombu, prefetch 4 (classic)"
# The ceiling issue 13 compares with: roger's prefetch (4 workers x its default
# prefetch_multiplier), acks coalesced with `multiple` as roger's consumer does.
KQB, KCB = "raw kombu, roger's prefetch, batched acks (quorum)", \
    "raw kombu, roger's prefetch, batched acks (classic)"


def roger_prefetch(workers: int = 4) -> int:
    """A consumer's prefetch with roger's default `prefetch_multiplier`."""
    import roger

    return math.ceil(workers * roger.Settings.model_fields["prefetch_multiplier"].default)


PEERS: list[tuple[str, Callable[[Config, str], System]]] = [
    ("celery", CelerySystem),
    ("dramatiq", DramatiqSystem),
    (KC, lambda cfg, tag: KombuSystem(cfg, tag, "classic")),
    (KQ, lambda cfg, tag: KombuSystem(cfg, tag, "quorum")),
    (KC4, lambda cfg, tag: KombuSystem(cfg, tag, "classic", prefetch=4)),
    (KQ4, lambda cfg, tag: KombuSystem(cfg, tag, "quorum", prefetch=4)),
    (KCB, lambda cfg, tag: KombuSystem(cfg, tag, "classic", prefetch=roger_prefetch(),
                                       batch_acks=True)),
    (KQB, lambda cfg, tag: KombuSystem(cfg, tag, "quorum", prefetch=roger_prefetch(),
                                       batch_acks=True)),
]


def factories(cfg: Config) -> list[tuple[str, Callable[[Config, str], System]]]:
    """roger on both queue types (each followed by its ``@REV`` twin with --baseline), peers."""
    return [*roger_rows(cfg, RQ, queue_type="quorum"),
            *roger_rows(cfg, RC, queue_type="classic"), *PEERS]

METRICS = [
    Metric("steady", "steady jobs/s"),
    Metric("from_start", "jobs/s from start"),
    Metric("cpu_sut", "CPU µs/job, system"),
    Metric("cpu_broker", "CPU µs/job, RabbitMQ"),
    Metric("busy", "cores busy %"),
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
        meter = procs.CpuMeter(proc.pid, consumers=isinstance(system, RogerSystem),
                               broker_url=system.url)

        def on_count(count: int) -> None:
            # CPU over the steady window only: start-up costs are not per job.
            if count >= (0.1 if not meter.marks else 0.9) * n and len(meter.marks) < 2:
                meter.mark(count)

        tally.wait(n, timeout=120 + n / 100, alive=proc.alive, on_count=on_count)
        metrics |= rates(n, proc.started, list(tally.done.values()))
        metrics |= meter.between()
        if tally.duplicates:
            progress(f"  note: {tally.duplicates} jobs ran twice (redelivered)")
        return metrics
    finally:
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


def run_systems(cfg: Config, workdir: str, name: str, n: int,
                factories: list[tuple[str, Callable[[Config, str], System]]]) -> Samples:
    """Every system of `factories` draining `n` jobs, once per repeat (see `interleaved`)."""
    runs = [(label, lambda tag, make=make: measure(make(cfg, tag), n, workdir))
            for label, make in factories]
    return interleaved(cfg, name, runs, lambda m: f"steady {m['steady']:,.0f}/s, "
                                                  f"from start {m['from_start']:,.0f}/s")


def run(cfg: Config, workdir: str) -> Section:
    n = cfg.throughput_jobs
    samples = run_systems(cfg, workdir, "throughput", n, factories(cfg))
    ratios = []
    for roger, ceiling, window, batched in ((RQ, KQ, KQ4, KQB), (RC, KC, KC4, KCB)):
        ratios += [Ratio(roger, "dramatiq", "steady", 1.5), Ratio(roger, "celery", "steady"),
                   Ratio(roger, ceiling, "steady", 0.8), Ratio(roger, window, "steady"),
                   Ratio(roger, batched, "steady", 0.8),
                   Ratio(roger, "dramatiq", "from_start"), Ratio(roger, "celery", "from_start"),
                   Ratio(roger, ceiling, "from_start")]
    ratios += [Ratio(KQ4, KQ, "steady"), Ratio(KC4, KC, "steady")]
    ratios += baseline_ratios(cfg, [RQ, RC], ["steady", "from_start", "cpu_sut"])
    notes = [
        f"{n:,} no-op jobs with a small dict argument, enqueued first, then processed by "
        "freshly started workers: roger 1 partition x 1 queue x 4 workers; Celery prefork "
        "-c 4 (acks_late, prefetch multiplier 1, no result backend); Dramatiq --processes 4 "
        "--threads 1; raw kombu: one consumer, one connection, prefetch 100, ack per message.",
        "Queue types: `roger (quorum)` is roger's default; `roger (classic)` uses "
        "`Settings(queue_type=\"classic\")`, the type Celery and Dramatiq use. The ceiling is "
        "measured on both types; each roger variant is compared with the ceiling of its type. "
        "*prefetch 4*: the same raw consumer with a prefetch of 4 (roger's with "
        "prefetch_multiplier 1: max_workers = 4), which isolates what a small window costs. "
        f"*roger's prefetch, batched acks*: the same raw consumer at roger's prefetch with its "
        f"default prefetch_multiplier ({roger_prefetch()}), acking with `multiple` half a "
        "window at a time (issue 13's reference).",
        "Every job appends its index to a per-process file; a run ends when every index was "
        "seen (no duplicates counted). *From start*: jobs/s from launching the worker process "
        "(interpreter start and imports included, for every system) to the last job. "
        "*Steady*: jobs/s between the 10th and the 90th percentile of completions.",
        "*CPU µs/job*: CPU time (user + system, from /proc) per job over the steady window, "
        "of the system's whole process tree and of RabbitMQ's Erlang VM; *cores busy %*: "
        "both together over the machine's cores. Well under 100 % means the system waits "
        "(round trips, a small prefetch) rather than computes.",
        "*Node.start() s*: roger only, how long `roger.Node(settings).start()` took to "
        "return (partition consuming). *enqueue msg/s*: the filling phase, for context "
        "(roger: `enqueue_many` in batches of 1,000, confirmed; peers: unconfirmed).",
        *baseline_note(cfg),
    ]
    return Section("throughput", "Throughput", samples, METRICS, ratios, notes)
