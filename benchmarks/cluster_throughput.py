"""No-op throughput on a 3-node RabbitMQ cluster against one node, same queue type (issue 17).

``python -m benchmarks.cluster_throughput [--jobs N] [--repeat R] [--workers W]``

Boots a private single node and a private 3-node cluster (neither is the
shared broker), then, for each repeat and each broker in alternating order:
enqueues N no-op jobs (`benchmarks.jobs.NoOp`, confirmed publishes, batches
of 500) into a fresh quorum partition, starts one roger node with W workers
and times the drain until every job is recorded. It reports, per broker:

- enqueue msg/s, drain jobs/s;
- CPU µs per job of the RabbitMQ VMs (all three summed on the cluster) and
  of roger's processes, during enqueue and drain together.

The machine is shared and loaded: each figure is a range over the repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import kombu

import roger
from benchmarks import procs
from benchmarks.cluster import RabbitCluster
from benchmarks.isolated import IsolatedRabbit
from benchmarks.jobs import NoOp

BATCH = 500
DRAIN_TIMEOUT = 600.0


def _vm_pids(nodes: list[IsolatedRabbit]) -> list[int]:
    pids: list[int] = []
    for node in nodes:
        if node.proc is not None:
            pids += list(procs.tree(node.proc.pid))
    return pids


def _recorded(out: Path) -> int:
    seen: set[str] = set()
    for path in out.glob("*.rec"):
        with contextlib.suppress(OSError):
            seen.update(line.split(" ", 1)[0] for line in path.read_text().splitlines())
    return len(seen)


def one_run(label: str, urls: list[str], vms: list[IsolatedRabbit], jobs: int, workers: int,
            work: Path) -> dict[str, float]:
    """Enqueue `jobs` no-ops, drain them with one node; the figures of this run."""
    partition = f"tput-{uuid.uuid4().hex[:8]}"
    out = work / partition
    out.mkdir()
    settings = roger.Settings(broker_url=urls, imports=["benchmarks.jobs"], queue_type="quorum",
                              side_queue_type="quorum",
                              partitions={partition: {"default": workers}}, idle_after=0,
                              state_dir=work / "state", node_name=f"tput-{partition}")
    vm_pids = _vm_pids(vms)
    cpu_vm0 = procs.cpu_seconds(vm_pids)
    started = time.monotonic()
    for first in range(0, jobs, BATCH):
        roger.enqueue_many([NoOp.create({"out": str(out), "i": i})
                            for i in range(first, min(jobs, first + BATCH))], partition,
                           settings=settings)
    enqueue_s = time.monotonic() - started
    node = roger.Node(settings).start()
    try:
        drain_start = time.monotonic()
        deadline = drain_start + DRAIN_TIMEOUT
        while _recorded(out) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not drained within {DRAIN_TIMEOUT:g} s")
            time.sleep(0.05)
        drain_s = time.monotonic() - drain_start
        roger_cpu = procs.cpu_seconds(list(procs.tree(node.pid)))
    finally:
        node.stop(timeout=30)
    cpu_vm = procs.cpu_seconds(vm_pids) - cpu_vm0
    with kombu.Connection(";".join(urls), connect_timeout=10) as conn:
        channel = conn.channel()
        for name in (f"{partition}-default", f"{partition}-default.buried",
                     f"{partition}-default.rejected", f"{partition}.global"):
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
    return {"enqueue": jobs / enqueue_s, "drain": jobs / drain_s,
            "broker_us": cpu_vm / jobs * 1e6, "roger_us": roger_cpu / jobs * 1e6}


def _range(values: list[float], fmt: str = "{:.0f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else \
        f"{fmt.format(lo)}-{fmt.format(hi)}"


def render(results: dict[str, list[dict[str, float]]], jobs: int, workers: int) -> str:
    lines = [f"{jobs} no-op jobs, quorum queues, one roger node with {workers} workers; "
             f"ranges over {len(next(iter(results.values())))} runs per broker "
             f"(machine shared with other users' tests).", "",
             "| broker | enqueue msg/s | drain jobs/s | RabbitMQ CPU µs/job | roger CPU µs/job |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, runs in results.items():
        col: Callable[[str], list[float]] = lambda key, runs=runs: [r[key] for r in runs]  # noqa: E731
        lines.append(f"| {label} | {_range(col('enqueue'))} | {_range(col('drain'))} | "
                     f"{_range(col('broker_us'))} | {_range(col('roger_us'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_throughput",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="roger-cluster-tput-"))
    single = IsolatedRabbit(5890, fd_limit=4096)
    cluster = RabbitCluster(3)
    results: dict[str, list[dict[str, float]]] = {"1 node": [], "3-node cluster": []}
    try:
        single.start()
        cluster.start()
        brokers = {"1 node": ([single.url], [single]),
                   "3-node cluster": (cluster.urls, cluster.nodes)}
        for r in range(args.repeat):
            order = list(brokers) if r % 2 == 0 else list(reversed(brokers))
            for label in order:
                urls, vms = brokers[label]
                figures = one_run(label, urls, vms, args.jobs, args.workers, work)
                print(f"[{label} run {r + 1}] " + ", ".join(
                    f"{k} {v:.0f}" for k, v in figures.items()), file=sys.stderr, flush=True)
                results[label].append(figures)
    finally:
        cluster.stop()
        single.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(render(results, args.jobs, args.workers))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ROGER_IDLE_AFTER", "0")
    sys.exit(main())
