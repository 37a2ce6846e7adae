"""scale: what idle partitions cost (memory, start time) and what splitting a queue costs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks import procs, throughput
from benchmarks.common import Config, Samples, Summary
from benchmarks.report import (
    Metric,
    Ratio,
    Section,
    baseline_note,
    baseline_ratios,
    progress,
    take,
)
from benchmarks.systems import RogerSystem, System, log_path, roger_rows

if TYPE_CHECKING:
    from benchmarks.baseline import Baseline

SETTLE = 2.0  # seconds after start before measuring: lazy imports and first heartbeats done
QUEUE_TYPES = ("quorum", "classic")  # roger's default, and the peers' type
QUEUES = {"a": 2, "b": 2}  # two queues per partition, 2 workers each (started lazily)
TARGET_USS_MIB, TARGET_START_S = 15.0, 30.0
LEVELS = ("root", "partition supervisors and node services", "consumers and coordinators",
          "workers")

SPLIT = "4 partitions x 1 queue x 2 workers"
SINGLE = "1 partition x 1 queue x 4 workers"


def _label(queue_type: str, partitions: int, suffix: str = "") -> str:
    return f"{queue_type}: {partitions} partition{'s' if partitions > 1 else ''} x 2 queues{suffix}"


def measure_idle(cfg: Config, queue_type: str, partitions: int, tag: str,
                 workdir: str, baseline: Baseline | None = None) -> dict[str, float]:
    """Start a node with `partitions` x 2 queues; its start time and memory once idle."""
    system = RogerSystem(cfg, tag, queue_type, partitions=partitions, queues=QUEUES,
                         baseline=baseline)
    system.stop_grace = 60.0 + partitions / 2  # stopping hundreds of consumers takes a while
    try:
        system.start(log_path(workdir, system, f"scale-{partitions}"))
        # Ample next to the 30 s target, yet bounded: a node that cannot start
        # its partitions keeps retrying them.
        info = system.wait_ready(timeout=60.0 + 0.5 * partitions)
        time.sleep(SETTLE)
        depth = procs.levels(int(info["root"]))
        mem = procs.memory(list(depth))
        metrics = {"start": info["ready"] - info["start"], "procs": float(len(depth)),
                   **mem, "uss_per_partition": mem["uss"] / partitions}
        for level in range(len(LEVELS)):
            pids = [p for p, d in depth.items() if min(d, len(LEVELS) - 1) == level]
            metrics[f"uss_level{level}"] = procs.memory(pids)["uss"]
            metrics[f"procs_level{level}"] = float(len(pids))
        return metrics
    finally:
        system.cleanup()


def _idle(cfg: Config, workdir: str) -> tuple[Samples, list[str]]:
    samples = Samples()
    # With --baseline each node is measured twice in a row, today's and the
    # baseline's, in alternating order over the repeats.
    versions: list[Baseline | None] = [None, cfg.baseline] if cfg.baseline else [None]
    suffixes = ["", *([cfg.baseline.suffix] if cfg.baseline else [])]
    # Big nodes take minutes to start and clean up: repeat only the small ones.
    for rep in range(cfg.repeat):
        for queue_type, p in ((qt, p) for qt in QUEUE_TYPES for p in cfg.scale_partitions):
            if rep > 0 and p > 10:
                continue
            for base in versions[::-1] if rep % 2 else versions:
                _idle_one(cfg, workdir, samples, rep, queue_type, p, base)
    extra = [line for suffix in suffixes for qt in QUEUE_TYPES
             for line in _marginal(cfg, samples, qt, suffix)]
    return samples, extra


def _idle_one(cfg: Config, workdir: str, samples: Samples, rep: int, queue_type: str, p: int,
              base: Baseline | None) -> None:
    label = _label(queue_type, p, base.suffix if base else "")
    tag = f"sc{rep}{queue_type[0]}{p}{'b' if base else ''}"
    metrics = take(samples, label, rep, f"scale {rep + 1}/{cfg.repeat}",
                   lambda a: measure_idle(cfg, queue_type, p, f"{tag}a{a}", workdir, base),
                   retries=1)
    if metrics is not None:
        progress(f"scale {rep + 1}/{cfg.repeat} {label}: started in "
                 f"{metrics['start']:.1f} s, USS {metrics['uss']:.0f} MiB, "
                 f"PSS {metrics['pss']:.0f} MiB, {metrics['procs']:.0f} processes")


def _median(samples: Samples, label: str, key: str) -> float | None:
    summary = Summary.of(samples.get(label, key))
    return summary.median if summary else None


def _marginal(cfg: Config, samples: Samples, queue_type: str, suffix: str = "") -> list[str]:
    """What one more idle partition costs: the slope from the smallest node.

    `suffix`: of the ``--baseline`` twin's labels (`Baseline.suffix`), or none.
    """
    base = cfg.scale_partitions[0]
    base_label = _label(queue_type, base, suffix)
    lines = [f"{queue_type.capitalize()} queues{suffix}: the cost of one more idle partition "
             f"(2 queues), from the difference with the {base}-partition node (medians):", "",
             "| partitions | USS MiB / partition | PSS MiB / partition | start s / partition | "
             f"USS target <= {TARGET_USS_MIB:g} MiB | start target < {TARGET_START_S:g} s |",
             "|---|---|---|---|---|---|"]
    for p in cfg.scale_partitions[1:]:
        label = _label(queue_type, p, suffix)
        slope = {}
        for key in ("uss", "pss", "start"):
            top, bottom = _median(samples, label, key), _median(samples, base_label, key)
            if top is not None and bottom is not None:
                slope[key] = (top - bottom) / (p - base)
        if len(slope) < 3:
            continue
        uss, pss, start = slope["uss"], slope["pss"], slope["start"]
        total_start = _median(samples, label, "start") or 0.0
        met_start = ("yes" if total_start < TARGET_START_S else "no") if p == 200 else ""
        lines.append(f"| {p} | {uss:.1f} | {pss:.1f} | {start:.3f} | "
                     f"{'yes' if uss <= TARGET_USS_MIB else 'no'} | {met_start} |")
    biggest = next((_label(queue_type, p, suffix) for p in reversed(cfg.scale_partitions)
                    if samples.get(_label(queue_type, p, suffix), "uss")), None)
    if biggest is not None:
        lines += ["", f"Where the memory of the {biggest} node is (USS MiB, processes):", "",
                  "| level | USS MiB | processes |", "|---|---|---|"]
        for level, what in enumerate(LEVELS):
            uss = _median(samples, biggest, f"uss_level{level}")
            count = _median(samples, biggest, f"procs_level{level}")
            if uss is not None and count:
                lines.append(f"| {what} | {uss:.0f} | {count:.0f} |")
    return [*lines, ""]


def run(cfg: Config, workdir: str) -> Section:
    samples, extra = _idle(cfg, workdir)
    factories: list[tuple[str, Callable[[Config, str], System]]] = [
        *roger_rows(cfg, SPLIT, queue_type="quorum", partitions=4, queues={"default": 2}),
        *roger_rows(cfg, SINGLE, queue_type="quorum", partitions=1, queues={"default": 4}),
    ]
    split = throughput.run_systems(cfg, workdir, "scale-throughput", cfg.scale_jobs, factories)
    extra += ["", "### Throughput: one queue of 4 workers, or 4 partitions of 2", "",
              f"{cfg.scale_jobs:,} no-op jobs spread evenly over the partitions' queues "
              "(quorum, roger's default), drained as in the throughput benchmark.", ""]
    tp_metrics = [Metric("steady", "steady jobs/s"), Metric("from_start", "jobs/s from start"),
                  Metric("node_start", "Node.start() s", "{:.2f}")]
    tp_ratios = [Ratio(SPLIT, SINGLE, "steady"), Ratio(SPLIT, SINGLE, "from_start"),
                 *baseline_ratios(cfg, [SPLIT, SINGLE], ["steady", "from_start"])]
    extra += Section("", "", split, tp_metrics, tp_ratios).markdown().splitlines()[2:]
    notes = [
        "Idle nodes in roger's default configuration (12 retry levels: 15 queues declared per "
        "roger queue), with quorum main queues (the default) and with classic ones; each "
        "partition has 2 queues of 2 workers, started lazily, so an idle queue has none.",
        "Each consumer and each partition coordinator holds one AMQP connection, and each "
        "quorum queue keeps files open in RabbitMQ: the broker's descriptor limits (in the "
        "header) bound how many partitions one RabbitMQ can serve.",
        "*Node.start() s*: until `roger.Node(settings).start()` returned (every partition "
        f"consuming). Memory {SETTLE:g} s later, summed over the node's whole process tree "
        "(the root and all its descendants) from /proc/PID/smaps_rollup: USS = private pages, "
        "PSS = private plus each process's share of shared pages.",
        "Nodes of more than 10 partitions are measured once (they take long to start and to "
        "clean up); smaller ones in every repeat.",
        *baseline_note(cfg),
    ]
    metrics = [Metric("start", "Node.start() s", "{:.2f}"), Metric("procs", "processes"),
               Metric("uss", "USS MiB", "{:,.0f}"), Metric("pss", "PSS MiB", "{:,.0f}"),
               Metric("rss", "RSS MiB", "{:,.0f}"),
               Metric("uss_per_partition", "USS MiB / partition", "{:.1f}")]
    idle = [_label(qt, p) for qt in QUEUE_TYPES for p in cfg.scale_partitions]
    ratios = baseline_ratios(cfg, idle, ["uss", "pss", "start"])
    return Section("scale", "Scale", samples, metrics, ratios, notes, extra)
