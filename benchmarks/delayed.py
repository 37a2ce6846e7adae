"""delayed: how close to its due time a delayed job starts, and what waiting ones cost RabbitMQ.

``python -m benchmarks [--quick] delayed`` (not part of a run of everything:
it waits 100 s and more). On a RabbitMQ node of its own
(`benchmarks.isolated`), so the memory figures are roger's delayed jobs and
nothing else:

1. precision: a node (one partition, 8 workers) and, for each delay d of
   `DELAYS`, jobs enqueued one by one 20 ms apart (so their due times fall
   anywhere within a second); each records perform start - (the moment just
   before its enqueue call + d). All delays run at once, through the same
   shared delay levels. "early" counts jobs that started before due (must
   be 0);
2. memory: `MEMORY_JOBS` jobs delayed by a year, enqueued in batches of
   1,000 while the node runs: RabbitMQ's memory (its own accounting, total
   and the quorum-queue categories) before and after, per million jobs by
   scaling; and the node's processes' memory (USS) before and after, which
   must not grow: the jobs are in RabbitMQ.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import roger
from benchmarks import procs
from benchmarks.common import HERE, Config, Samples, percentile
from benchmarks.isolated import RabbitNode, isolated
from benchmarks.jobs import Delayed
from benchmarks.report import Metric, Section, progress

DELAYS = (1, 10, 63, 100)  # 63 = 0b111111: six level queues, more hops than 1 h's four
SPACING = 0.02  # seconds between two enqueues of one delay
NOTES = HERE / "DELAYED.md"  # this section, kept apart: a full run carries it over


def sizes(cfg: Config) -> tuple[int, int]:
    """(jobs per delay, jobs for the memory figure)."""
    return (20, 10_000) if cfg.quick else (100, 100_000)


def read_values(out: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for path in Path(out).glob("*.rec"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                values[int(parts[0])] = float(parts[2])
    return values


def precision(partition: str, per_delay: int, out: str) -> dict[int, dict[str, float]]:
    """Per delay: p50, p99, max (ms of lateness) and early (count)."""
    index = {}
    i = 0
    for _ in range(per_delay):
        for d in DELAYS:
            t = time.time()
            Delayed.create({"out": out, "i": i, "due": t + d}).enqueue(partition, delay=d)
            index[i] = d
            i += 1
        time.sleep(SPACING)
    deadline_total = time.monotonic() + max(DELAYS) + 60
    while time.monotonic() < deadline_total and len(read_values(out)) < i:
        time.sleep(1.0)  # jobs run on the node; their records are files
    values = read_values(out)
    missing = i - len(values)
    if missing:
        progress(f"delayed: {missing} of {i} jobs did not run within the wait")
    result = {}
    for d in DELAYS:
        late = [values[k] * 1000 for k, dd in index.items() if dd == d and k in values]
        result[d] = {"p50": percentile(late, 50), "p99": percentile(late, 99),
                     "max": max(late), "early": float(sum(1 for v in late if v < 0)),
                     "ran": float(len(late))}
    return result


def memory(node: roger.Node, settings: roger.Settings, rabbit: RabbitNode, partition: str,
           jobs: int, out: str) -> dict[str, float]:
    assert node.pid is not None
    pids = list(procs.tree(node.pid))
    before_node = procs.memory(pids)["uss"]
    time.sleep(2)
    before = rabbit.memory()
    year = 365 * 24 * 3600
    for start in range(0, jobs, 1000):
        batch = [Delayed.create({"out": out, "i": -1, "due": 0})
                 for _ in range(min(1000, jobs - start))]
        roger.enqueue_many(batch, partition, delay=year, settings=settings)
    time.sleep(10)
    fresh = rabbit.memory()
    after_node = procs.memory(list(procs.tree(node.pid)))["uss"]
    # Fresh messages sit in the quorum write-ahead log's memory tables until
    # the WAL rolls over (at wal_max_size_bytes, 512 MiB by default): force
    # that, to see what waiting jobs cost for good.
    try:
        rabbit.ctl("eval", "ra_log_wal:force_roll_over(ra_log_wal).")
        time.sleep(15)
        # And collect garbage, so that what is left is what the jobs hold.
        rabbit.ctl("eval", "[erlang:garbage_collect(P) || P <- erlang:processes()], ok.")
        time.sleep(3)
        settled = rabbit.memory()
    except Exception as e:  # an older or newer Ra: report the fresh figure only
        progress(f"delayed: could not roll the WAL over: {e}")
        settled = {}
    scale = 1_000_000 / jobs
    out_ = {"node_uss_before_mib": before_node, "node_uss_after_mib": after_node}
    for label, mem in (("fresh", fresh), ("settled", settled)):
        if mem:
            for k in ("total", "quorum_queue_procs", "quorum_ets", "binary"):
                out_[f"{label}_{k}"] = (mem.get(k, 0.0) - before.get(k, 0.0)) * scale
    return out_


def run(cfg: Config, workdir: str) -> Section:
    per_delay, memory_jobs = sizes(cfg)
    partition = cfg.name("delayed")
    samples = Samples()
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    state_dir = tempfile.mkdtemp(prefix="rbd")
    mem: dict[str, float] = {}
    try:
        with isolated() as rabbit:
            settings = roger.Settings(
                broker_url=rabbit.url, partitions={partition: {"default": 8}},
                imports=["benchmarks.jobs"], node_name=cfg.name("node"), state_dir=state_dir,
                idle_after=0)
            roger.configure(settings)
            with roger.Node(settings) as node:
                progress(f"delayed: {per_delay} jobs for each delay of {DELAYS} s")
                for d, figures in precision(partition, per_delay, out).items():
                    samples.add(f"{d} s", figures, 0)
                progress(f"delayed: {memory_jobs} jobs delayed by a year")
                mem = memory(node, settings, rabbit, partition, memory_jobs, out)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    metrics = [Metric("p50", "p50 late ms", "{:.0f}"), Metric("p99", "p99 late ms", "{:.0f}"),
               Metric("max", "max late ms", "{:.0f}"), Metric("early", "early", "{:.0f}"),
               Metric("ran", "jobs ran", "{:.0f}")]
    extra = ["| memory, per 1,000,000 delayed jobs (scaled) | RabbitMQ total | quorum queue "
             "processes | quorum ETS | binaries |", "|---|---|---|---|---|"]
    for label, what in (("fresh", "just enqueued"),
                        ("settled", "after a WAL roll-over and a GC")):
        if f"{label}_total" in mem:
            extra.append(f"| {what} | {mem[f'{label}_total']:,.0f} MiB | "
                         f"{mem[f'{label}_quorum_queue_procs']:,.0f} MiB | "
                         f"{mem[f'{label}_quorum_ets']:,.0f} MiB | "
                         f"{mem[f'{label}_binary']:,.0f} MiB |")
    extra += ["", f"roger node (all its processes, USS) before / after the {memory_jobs:,} "
              f"jobs: {mem.get('node_uss_before_mib', 0):.1f} / "
              f"{mem.get('node_uss_after_mib', 0):.1f} MiB."]
    notes = [
        f"On an isolated RabbitMQ node (3.10, quorum delay levels); one roger node, one "
        f"partition x 8 workers. {per_delay} jobs per delay, enqueued one by one {SPACING * 1000:g}"
        " ms apart, all delays at once. Late = perform start - (the time just before the "
        "enqueue call + d); early = jobs that started before due (must be 0).",
        "1 h, scaled down: a delay crosses one level queue per set bit of its seconds "
        "(3600 = 0b111000010000: 4 queues, 12 exchanges); 63 s (0b111111) crosses 6 queues, "
        "more than any hour-long delay's hops, so its lateness bounds 1 h's (a delay's "
        "length adds no error of its own: each queue's TTL is exact to the millisecond).",
        "Rounding: RabbitMQ waits whole seconds, rounded up from the enqueue moment, so a job "
        "is late by up to 1 s minus the time its enqueue took, plus milliseconds per hop.",
        f"Memory: {memory_jobs:,} jobs delayed a year (about 200-byte bodies), the growth of "
        "RabbitMQ's own accounting (`rabbitmqctl status`) scaled to 1,000,000; fresh "
        "messages are held in the quorum WAL's memory tables (bounded by "
        "`wal_max_size_bytes`, 512 MiB by default, for all quorum queues together) until "
        "the WAL rolls over. The total is what the Erlang VM holds from the OS, allocator "
        "reserves included; the categories are what RabbitMQ attributes (a one-off "
        "comparison: the same 100,000 bodies in a classic queue added 3.4 GiB per million, "
        "600 MiB of it in the queue process, which keeps them in memory).",
    ]
    return Section("delayed", "Delayed jobs", samples, metrics, [], notes, extra)


def main(cfg: Config) -> int:
    """``python -m benchmarks delayed``: run, print, and keep the section in DELAYED.md."""
    workdir = tempfile.mkdtemp(prefix="roger-bench-")
    try:
        section = run(cfg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = section.markdown()
    print(text, flush=True)
    NOTES.write_text(text + "\n")
    progress(f"wrote {os.path.relpath(NOTES)}")
    return 0
