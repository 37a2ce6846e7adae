"""scale: what idle partitions cost (memory, start time) and what splitting a queue costs."""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks import procs, throughput
from benchmarks.common import Config, Samples, Summary
from benchmarks.report import Metric, Ratio, Section, progress, take
from benchmarks.systems import RogerSystem, System, log_path

SETTLE = 2.0  # seconds after start before measuring: lazy imports and first heartbeats done
QUEUE_TYPES = ("quorum", "classic")  # roger's default, and the peers' type
QUEUES = {"a": 2, "b": 2}  # two queues per partition, 2 workers each (started lazily)
TARGET_USS_MIB, TARGET_START_S = 15.0, 30.0
LEVELS = ("root", "partition supervisors and node services", "consumers and coordinators",
          "workers")

SPLIT = "4 partitions x 1 queue x 2 workers"
SINGLE = "1 partition x 1 queue x 4 workers"


def _label(queue_type: str, partitions: int) -> str:
    return f"{queue_type}: {partitions} partition{'s' if partitions > 1 else ''} x 2 queues"


def measure_idle(cfg: Config, queue_type: str, partitions: int, tag: str,
                 workdir: str) -> dict[str, float]:
    """Start a node with `partitions` x 2 queues; its start time and memory once idle."""
    system = RogerSystem(cfg, tag, queue_type, partitions=partitions, queues=QUEUES)
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
    # Big nodes take minutes to start and clean up: repeat only the small ones.
    for rep in range(cfg.repeat):
        for queue_type, p in ((qt, p) for qt in QUEUE_TYPES for p in cfg.scale_partitions):
            if rep > 0 and p > 10:
                continue
            label = _label(queue_type, p)
            tag = f"sc{rep}{queue_type[0]}{p}"
            metrics = take(samples, label, rep, f"scale {rep + 1}/{cfg.repeat}",
                           lambda a, qt=queue_type, p=p, tag=tag: measure_idle(
                               cfg, qt, p, f"{tag}a{a}", workdir),
                           retries=1)
            if metrics is not None:
                progress(f"scale {rep + 1}/{cfg.repeat} {label}: started in "
                         f"{metrics['start']:.1f} s, USS {metrics['uss']:.0f} MiB, "
                         f"PSS {metrics['pss']:.0f} MiB, {metrics['procs']:.0f} processes")
    return samples, [line for qt in QUEUE_TYPES for line in _marginal(cfg, samples, qt)]


def _median(samples: Samples, label: str, key: str) -> float | None:
    summary = Summary.of(samples.get(label, key))
    return summary.median if summary else None


def _marginal(cfg: Config, samples: Samples, queue_type: str) -> list[str]:
    """What one more idle partition costs: the slope from the smallest node."""
    base = cfg.scale_partitions[0]
    base_label = _label(queue_type, base)
    lines = [f"{queue_type.capitalize()} queues: the cost of one more idle partition "
             f"(2 queues), from the difference with the {base}-partition node (medians):", "",
             "| partitions | USS MiB / partition | PSS MiB / partition | start s / partition | "
             f"USS target <= {TARGET_USS_MIB:g} MiB | start target < {TARGET_START_S:g} s |",
             "|---|---|---|---|---|---|"]
    for p in cfg.scale_partitions[1:]:
        label = _label(queue_type, p)
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
    biggest = next((_label(queue_type, p) for p in reversed(cfg.scale_partitions)
                    if samples.get(_label(queue_type, p), "uss")), None)
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
        (SPLIT, lambda c, tag: RogerSystem(c, tag, "quorum", 4, {"default": 2})),
        (SINGLE, lambda c, tag: RogerSystem(c, tag, "quorum", 1, {"default": 4})),
    ]
    split = throughput.run_systems(cfg, workdir, "scale-throughput", cfg.scale_jobs, factories)
    extra += ["", "### Throughput: one queue of 4 workers, or 4 partitions of 2", "",
              f"{cfg.scale_jobs:,} no-op jobs spread evenly over the partitions' queues "
              "(quorum, roger's default), drained as in the throughput benchmark.", ""]
    tp_metrics = [Metric("steady", "steady jobs/s"), Metric("from_start", "jobs/s from start"),
                  Metric("node_start", "Node.start() s", "{:.2f}")]
    tp_ratios = [Ratio(SPLIT, SINGLE, "steady"), Ratio(SPLIT, SINGLE, "from_start")]
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
    ]
    metrics = [Metric("start", "Node.start() s", "{:.2f}"), Metric("procs", "processes"),
               Metric("uss", "USS MiB", "{:,.0f}"), Metric("pss", "PSS MiB", "{:,.0f}"),
               Metric("rss", "RSS MiB", "{:,.0f}"),
               Metric("uss_per_partition", "USS MiB / partition", "{:.1f}")]
    return Section("scale", "Scale", samples, metrics, [], notes, extra)
