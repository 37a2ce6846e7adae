"""scale: a thousand tenants on one node (issue 14), and what splitting a queue costs.

One roger node with N partitions x 2 queues (N = 1,000; --quick: 100),
`idle_after` = IDLE_AFTER, so it starts with every partition dormant. Run
twice: on a RabbitMQ node of the benchmark's own with a raised descriptor
limit (`benchmarks.isolated`) and quorum queues (roger's default), and on
this machine's shared broker with classic queues. Each run, in order:

1. `Node.start()` time; 2 x idle_after later the USS of the node's whole
   process tree, its AMQP connections (the broker's `list_connections`,
   matched to the tree's sockets) and what the broker spends on it
   (memory, file descriptors, queues) against a look just before;
2. first jobs: per sampled dormant partition, one latency job to queue
   ``a`` (the whole partition wakes), then one to ``b`` (an idle queue of an
   awake partition); each waits for the previous to start;
3. a busy queue's latency (partition 0, awake, jobs 5 ms apart) and the
   memory of its awake partition;
4. keyed enqueues: `Job.enqueue` of a job with a queue_key on a fresh
   dormant partition (the watcher's hosted coordinator answers the claim),
   interleaved with keyed enqueues on the busy partition;
5. rotation: 10 partitions busy at a time, the next 10 every 10 s;
6. after the node stopped: a node of just 10 partitions, kept busy the same
   way (the reference of 5, and the watcher's fixed cost).

Each figure is printed with its goal as soon as it is measured; a phase
that fails is reported with its reason and the others still run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import isolated, procs, rabbit, throughput
from benchmarks.common import BenchError, Config, Samples, percentile
from benchmarks.isolated import RabbitNode
from benchmarks.latency import paced
from benchmarks.report import Metric, Ratio, Section, baseline_ratios, progress
from benchmarks.systems import RogerSystem, System, log_path, roger_rows
from benchmarks.tally import Tally

IDLE_AFTER = 5.0  # seconds: short, so that "2 x idle_after later" comes soon
QUEUES = {"a": 2, "b": 2}  # two queues per partition, 2 workers each (started lazily)
ACTIVE, WINDOW = 10, 10.0  # rotation: busy partitions at a time, seconds each
BACKLOG = 100  # jobs kept queued per busy partition while feeding
STRIDE = 10_000_000  # job index = partition slot * STRIDE + sequence (feeding)
GAP = 0.1  # seconds between two sampled enqueues
WARM_UP = 10  # untimed jobs before the busy queue's latency
INTERVAL = 0.005  # busy queue: seconds between jobs, as in the latency benchmark
START_WAIT = 900.0  # seconds `Node.start()` may take before the run gives up
REF_PARTITIONS = 10
REF_WARM_UP = 5.0  # seconds the reference node is fed before its window


@dataclass(frozen=True)
class Sizes:
    partitions: int
    first_jobs: int  # dormant partitions sampled for first-job latency
    busy_jobs: int
    keyed: int  # dormant partitions sampled for keyed enqueue (2 busy samples each)
    rotation: float  # seconds of rotation (and of the reference's window)

    @classmethod
    def of(cls, cfg: Config) -> Sizes:
        if cfg.quick:
            return cls(cfg.scale_tenants, first_jobs=20, busy_jobs=100, keyed=20, rotation=30.0)
        return cls(cfg.scale_tenants, first_jobs=100, busy_jobs=cfg.latency_jobs, keyed=100,
                   rotation=60.0)

    def check(self) -> None:
        need = 1 + self.first_jobs + self.keyed + ACTIVE * int(self.rotation // WINDOW)
        if need > self.partitions:
            raise ValueError(f"{self.partitions} partitions are too few: the phases use {need}")


# ----------------------------------------------------------------- the goals


@dataclass(frozen=True)
class Goal:
    key: str
    figure: str  # with {n}: the node's partitions
    goal: str
    met: Callable[[dict[str, float]], bool]
    show: Callable[[dict[str, float]], str]


def _ms(v: float) -> str:
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.1f} ms"


GOALS = [
    Goal("start", "{n:,} partitions x 2 queues, idle: `Node.start()` returns", "<= 60 s",
         lambda f: f["start"] <= 60.0,
         lambda f: f"{f['start']:.1f} s" + (f" (again, its queues declared: {f['restart']:.1f} s)"
                                            if "restart" in f else "")),
    Goal("uss", "the same node 2x idle_after later: USS of its whole process tree",
         "<= 1.5 GiB", lambda f: f["uss"] <= 1536.0,
         lambda f: f"{f['uss']:,.0f} MiB ({f['procs']:.0f} processes)"),
    Goal("connections", "its AMQP connections to RabbitMQ (`rabbitmqctl list_connections`)",
         "<= 20", lambda f: f["connections"] <= 20, lambda f: f"{f['connections']:.0f}"),
    Goal("first_dormant", "first job on an idle queue of a dormant partition: enqueue -> "
         "perform start, p99", "<= busy-queue p99 + 500 ms",
         lambda f: f["first_dormant"] <= f["busy_p99"] + 500.0,
         lambda f: f"{_ms(f['first_dormant'])} (p50 {_ms(f['first_dormant_p50'])}, max "
                   f"{_ms(f['first_dormant_max'])}; busy p99 {_ms(f['busy_p99'])})"),
    Goal("first_idle", "first job on an idle queue of an awake partition: enqueue -> "
         "perform start, p99", "<= busy-queue p99 + 500 ms",
         lambda f: f["first_idle"] <= f["busy_p99"] + 500.0,
         lambda f: f"{_ms(f['first_idle'])} (p50 {_ms(f['first_idle_p50'])}, max "
                   f"{_ms(f['first_idle_max'])}; busy p99 {_ms(f['busy_p99'])})"),
    Goal("keyed", "a job with a queue_key on an idle (dormant) partition: `enqueue` p99",
         "<= 2x a busy partition's", lambda f: f["keyed"] <= 2 * f["keyed_busy"],
         lambda f: f"{_ms(f['keyed'])} (max {_ms(f['keyed_max'])}; busy partition "
                   f"{_ms(f['keyed_busy'])}: {f['keyed'] / f['keyed_busy']:.2f}x)"),
    Goal("rotation", "{n:,} partitions, 10 busy at a time (rotating every 10 s), "
         "throughput / 10 partitions alone", ">= 0.9x",
         lambda f: f["rotation"] / f["alone"] >= 0.9,
         lambda f: f"{f['rotation'] / f['alone']:.2f}x ({f['rotation']:,.0f} / "
                   f"{f['alone']:,.0f} jobs/s; alone: the mean of a run before and one "
                   "after the big node)"),
]
# Figures a goal needs besides its own key (a reference measured in another phase).
NEEDS = {"first_dormant": ["busy_p99"], "first_idle": ["busy_p99"], "keyed": ["keyed_busy"],
         "rotation": ["alone"]}


@dataclass
class Run:
    """One broker's run: figures by key, reasons for those not measured, sizing facts."""

    label: str  # e.g. "quorum, isolated RabbitMQ"
    partitions: int
    figures: dict[str, float] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # goal key -> why it has no figure
    sizing: dict[str, Any] = field(default_factory=dict)

    def cell(self, goal: Goal) -> tuple[str, str]:
        """(measured, met) for the results table."""
        keys = [goal.key, *NEEDS.get(goal.key, [])]
        missing = [k for k in keys if k not in self.figures]
        if missing:
            reasons = [self.why[k] for k in keys if k in self.why]
            return f"not measured: {reasons[0] if reasons else 'see above'}", "-"
        return goal.show(self.figures), "yes" if goal.met(self.figures) else "**no**"

    def report(self, *keys: str) -> None:
        """Print each goal whose figures are all known now (and involve one of `keys`)."""
        for goal in GOALS:
            if any(k in keys for k in [goal.key, *NEEDS.get(goal.key, [])]):
                measured, met = self.cell(goal)
                if met != "-":
                    progress(f"scale [{self.label}] {goal.figure.format(n=self.partitions)}: "
                             f"{measured} — goal {goal.goal}: "
                             f"{'met' if met == 'yes' else 'NOT met'}")

    def failed(self, keys: list[str], error: BaseException) -> None:
        text = str(error) if isinstance(error, BenchError) else f"{type(error).__name__}: {error}"
        text = " ".join(text.split())[:300]
        progress(f"scale [{self.label}] not measured ({', '.join(keys)}): {text}")
        for k in keys:
            self.why.setdefault(k, text)


def _phase(run: Run, keys: list[str], fn: Callable[[], None]) -> bool:
    try:
        fn()
    except Exception as e:  # one phase's failure must not lose the others
        run.failed(keys, e)
        return False
    run.report(*keys)
    return True


# ------------------------------------------------------------ driver helpers


def _node_settings(cfg: Config, tag: str) -> dict[str, Any]:
    """idle_after, and a system exchange of the node's own: on the shared broker other
    sessions' roger nodes and `roger.info` calls would otherwise reach it (every
    cluster-wide call asks the node's root for its status)."""
    return {"idle_after": IDLE_AFTER, "system_exchange_prefix": cfg.name(tag)}



def _predeclare(settings: Any, pairs: list[tuple[str, str]]) -> None:
    """Declare queue families from the driver's producer now, as a long-lived producer
    would have, so that enqueue timings do not include a first declaration."""
    try:
        from roger.amqp import broker
    except ImportError:
        return
    producer = broker.get_broker(settings)
    for partition, queue in pairs:
        producer.declare(settings, partition, queue)


def _wait_index(tally: Tally, index: int, system: System, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while index not in tally.done:
        if system.proc is not None and not system.proc.alive():
            raise BenchError("the node died")
        if time.monotonic() > deadline:
            raise BenchError(f"job {index} did not start within {timeout:g} s")
        time.sleep(0.002)
        tally.poll()


class _Counting(Tally):
    """A tally that also counts completions per partition slot (index // STRIDE)."""

    def __init__(self, out: str) -> None:
        super().__init__(out)
        self.by_slot: Counter[int] = Counter()

    def _parse(self, line: bytes) -> None:
        index = int(line.split(maxsplit=1)[0])
        if index not in self.done:
            self.by_slot[index // STRIDE] += 1
        super()._parse(line)


def feed(system: RogerSystem, partitions: list[str], out: str, duration: float,
         window: float | None, warm_up: float = 0.0) -> tuple[float, list[float]]:
    """Keep ACTIVE partitions busy (BACKLOG jobs queued each) for warm_up + duration
    seconds, moving to the next ACTIVE every `window` s (None: always the same).

    Returns jobs/s completed within the last `duration` seconds, and for each
    partition fed the seconds from its first enqueue to its first job's start
    (how long waking it took, under load).
    """
    import roger
    from benchmarks.jobs import NoOp

    tally = _Counting(out)
    sent = [0] * len(partitions)
    first_sent: dict[int, float] = {}
    start, wall = time.monotonic(), time.time()
    end = start + warm_up + duration
    while (now := time.monotonic()) < end:
        k = int((now - start) // window) if window else 0
        tally.poll()
        for j in range(k * ACTIVE, min((k + 1) * ACTIVE, len(partitions))):
            outstanding = sent[j] - tally.by_slot[j]
            if outstanding < BACKLOG // 2:
                count = BACKLOG - outstanding
                first_sent.setdefault(j, time.time())
                jobs = [NoOp.create(rabbit.body_of(j * STRIDE + sent[j] + m, out))
                        for m in range(count)]
                roger.enqueue_many(jobs, partitions[j], "a", settings=system.settings)
                sent[j] += count
        if system.proc is not None and not system.proc.alive():
            raise BenchError("the node died while fed")
        time.sleep(0.01)
    tally.poll()
    t0 = wall + warm_up
    first_done: dict[int, float] = {}
    for index, t in tally.done.items():
        slot = index // STRIDE
        if t < first_done.get(slot, float("inf")):
            first_done[slot] = t
    wakes = [first_done[j] - first_sent[j] for j in first_sent if j in first_done]
    return sum(1 for t in tally.done.values() if t0 <= t < t0 + duration) / duration, wakes


def _status(system: RogerSystem, timeout: float = 300.0) -> tuple[dict, float]:
    """The node's status through its control socket, and how long it took."""
    from roger.control import Client

    begin = time.monotonic()
    with Client(system.settings.control_socket, timeout=timeout) as ctl:
        status = ctl.request("status")
    return status, time.monotonic() - begin


def _uss(pids: list[int]) -> float:
    return procs.memory(pids)["uss"]


# ----------------------------------------------------------------- one broker


def tenants(cfg: Config, workdir: str, node: RabbitNode, queue_type: str, label: str,
            own_broker: bool) -> Run:
    """The whole sequence on one broker (see the module docstring)."""
    sizes = Sizes.of(cfg)
    sizes.check()
    run = Run(label, sizes.partitions)
    c = dataclasses.replace(cfg, broker_url=node.url)
    port = urllib.parse.urlsplit(node.url).port or 5672
    tag = f"t{queue_type[0]}"
    # The reference (10 partitions alone) runs before and after the big node: quorum
    # queues' throughput drifts by 20 % within minutes, and the mean evens the drift out.
    # Before the broker's own figures are read, so that its queues are not counted.
    alone: list[float] = []
    _phase(run, [], lambda: _alone(run, c, workdir, queue_type, own_broker, sizes, alone, 0))
    try:
        before = {"memory": node.memory(), "fds": node.file_descriptors()}
    except BenchError as e:
        before = {}
        progress(f"scale [{label}] cannot read the broker's figures: {e}")
    system = RogerSystem(c, tag, queue_type, partitions=sizes.partitions, queues=QUEUES,
                         settings=_node_settings(cfg, tag))
    system.delete_queues = not own_broker
    system.stop_grace = 120.0
    parts = system.partitions
    busy = parts[0]
    first = parts[1:1 + sizes.first_jobs]
    keyed = parts[1 + sizes.first_jobs:1 + sizes.first_jobs + sizes.keyed]
    rotating = parts[1 + sizes.first_jobs + sizes.keyed:]
    rotating = rotating[:ACTIVE * int(sizes.rotation // WINDOW)]
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    info: dict[str, Any] = {}
    try:
        def start() -> None:
            system.start(log_path(workdir, system, f"scale-{sizes.partitions}"))
            info.update(system.wait_ready(timeout=START_WAIT))
            run.figures["start"] = info["ready"] - info["start"]

        if not _phase(run, ["start", "uss", "connections", "first_dormant", "first_idle",
                            "busy_p99", "keyed", "keyed_busy", "rotation"], start):
            return run
        _predeclare(system.settings, [(p, q) for p in parts[:1 + sizes.first_jobs
                                                              + sizes.keyed] + rotating
                                      for q in QUEUES])
        _phase(run, ["uss", "connections"],
               lambda: _idle_figures(run, system, node, port, info, before))
        _phase(run, ["first_dormant", "first_idle"],
               lambda: _first_jobs(run, system, first, out))
        _phase(run, ["busy_p99"], lambda: _busy(run, system, busy, sizes.busy_jobs, out))
        _phase(run, ["keyed", "keyed_busy"], lambda: _keyed(run, system, busy, keyed, out))
        _phase(run, ["rotation"], lambda: _rotation(run, system, rotating, sizes, out))
        try:
            run.sizing["fds_after_traffic"] = node.file_descriptors()
        except BenchError as e:
            progress(f"scale [{label}] cannot read the broker's descriptors: {e}")
        _phase(run, ["restart"], lambda: _restart(run, system, workdir, sizes))
    finally:
        begin = time.monotonic()
        system.cleanup()
        run.sizing["cleanup_s"] = time.monotonic() - begin
        shutil.rmtree(out, ignore_errors=True)
    done = _phase(run, ["alone"],
                  lambda: _alone(run, c, workdir, queue_type, own_broker, sizes, alone, 1))
    if not done and alone:  # the run before the big node worked: judge against it alone
        run.figures["alone"] = statistics.mean(alone)
        run.report("alone")
    return run


def _idle_figures(run: Run, system: RogerSystem, node: RabbitNode, port: int,
                  info: dict, before: dict) -> None:
    """Memory, connections and broker costs of the node once everything is asleep."""
    time.sleep(max(0.0, info["ready"] + 2 * IDLE_AFTER - time.time()))
    root = int(info["root"])
    tree = procs.levels(root)
    mem = procs.memory(list(tree))
    run.figures.update(uss=mem["uss"], pss=mem["pss"], procs=float(len(tree)))
    ours = procs.tcp_client_ports(list(tree), port)
    theirs = set(node.connection_ports())
    run.figures["connections"] = float(len(ours & theirs))
    s = run.sizing
    s["tcp_to_broker"] = len(ours)
    status, took = _status(system)
    s["status_s"] = took
    running = status.get("running", {})
    s["dormant"] = sum(1 for p in running.values() if p.get("idle") and p.get("pid") is None)
    watcher = status.get("processes", {}).get("roger.watcher", {}).get("pid")
    if watcher:
        s["watcher_uss"] = _uss([int(watcher)])
    s["own_uss"] = {name: _uss([int(p["pid"])])
                    for name, p in status.get("processes", {}).items() if p.get("pid")}
    s["root_uss"] = _uss([root])
    queues = node.queues(system.marker)
    s["queues"] = len(queues)
    s["queues_by_type"] = dict(Counter(t for _, t in queues))
    # Besides the partitions' events exchanges, the node's own system exchange.
    s["exchanges"] = sum(1 for x in node.exchanges(system.marker) if not x.endswith(".system"))
    if before:
        s["memory_before"], s["fds_before"] = before["memory"], before["fds"]
    s["memory_idle"] = node.memory()
    s["fds_idle"] = node.file_descriptors()
    progress(f"scale [{run.label}] idle node: {len(tree)} processes, USS {mem['uss']:,.0f} MiB "
             f"(watcher {s.get('watcher_uss', 0):,.0f} MiB), {len(ours)} TCP connections to "
             f"the broker; {s['dormant']} dormant partitions; status took {took:.1f} s; "
             f"{s['queues']} queues, {s['exchanges']} exchanges; broker "
             f"{s['memory_idle']['total']:,.0f} MiB, {s['fds_idle']['total']} fds")


def _first_jobs(run: Run, system: RogerSystem, partitions: list[str], out: str) -> None:
    from benchmarks.jobs import Latency

    tally = Tally(out)
    dormant: list[float] = []
    idle: list[float] = []
    index = 1_000_000_000
    for p in partitions:
        for queue, bucket in (("a", dormant), ("b", idle)):
            body = rabbit.body_of(index, out)
            body["t"] = time.time()
            Latency.create(body).enqueue(p, queue)
            _wait_index(tally, index, system)
            bucket.append(tally.values[index] * 1000)
            index += 1
            time.sleep(GAP)
    run.figures.update(first_dormant=percentile(dormant, 99),
                       first_dormant_p50=percentile(dormant, 50), first_dormant_max=max(dormant),
                       first_idle=percentile(idle, 99), first_idle_p50=percentile(idle, 50),
                       first_idle_max=max(idle))
    run.sizing["first_jobs"] = len(partitions)


def _busy(run: Run, system: RogerSystem, partition: str, n: int, out: str) -> None:
    from benchmarks.jobs import Latency

    tally = Tally(out)
    base = 2_000_000_000

    def send(body: dict) -> None:
        Latency.create(body).enqueue(partition, "a")

    paced(send, out, base + n, WARM_UP, 0.02)  # wakes the partition; not counted
    for i in range(base + n, base + n + WARM_UP):
        _wait_index(tally, i, system)
    time.sleep(0.5)
    paced(send, out, base, n, INTERVAL)
    for i in range(base, base + n):
        _wait_index(tally, i, system)
    ms = [tally.values[base + i] * 1000 for i in range(n)]
    run.figures.update(busy_p99=percentile(ms, 99), busy_p50=percentile(ms, 50))
    # The awake partition's processes, while it is awake.
    status, _ = _status(system)
    entry = status.get("running", {}).get(partition, {})
    queue = entry.get("queues", {}).get("a", {})
    if entry.get("pid") and queue.get("pid"):
        whole = procs.levels(int(entry["pid"]))
        consumer = [int(queue["pid"]), *map(int, queue.get("workers", []))]
        run.sizing["awake"] = {"partition_uss": _uss(list(whole)),
                               "queue_uss": _uss(consumer), "workers": len(consumer) - 1,
                               "processes": len(whole)}
    tree = procs.levels(int(system.ready_info["root"]))
    port = urllib.parse.urlsplit(system.url).port or 5672
    run.sizing["awake_tcp"] = len(procs.tcp_client_ports(list(tree), port))
    run.sizing["awake_partitions"] = sum(1 for p in status.get("running", {}).values()
                                         if p.get("pid"))


def _keyed(run: Run, system: RogerSystem, busy: str, partitions: list[str], out: str) -> None:
    from benchmarks.jobs import Keyed

    dormant: list[float] = []
    awake: list[float] = []
    index = 3_000_000_000

    def enqueue(partition: str, bucket: list[float]) -> None:
        nonlocal index
        job = Keyed.create({"i": index, "out": out, "key": f"k{index}"})
        begin = time.perf_counter()
        job.enqueue(partition, "a")
        bucket.append((time.perf_counter() - begin) * 1000)
        index += 1

    # Untimed: the busy partition may have fallen asleep meanwhile (a slow status call);
    # wait until this job ran, so that partition 0 is awake for every timed sample.
    tally = Tally(out)
    enqueue(busy, [])
    _wait_index(tally, index - 1, system)
    for p in partitions:
        enqueue(p, dormant)
        time.sleep(GAP)
        for _ in range(2):
            enqueue(busy, awake)
            time.sleep(GAP / 2)
    run.figures.update(keyed=percentile(dormant, 99), keyed_busy=percentile(awake, 99),
                       keyed_max=max(dormant), keyed_busy_max=max(awake),
                       keyed_p50=percentile(dormant, 50), keyed_busy_p50=percentile(awake, 50))


def _rotation(run: Run, system: RogerSystem, partitions: list[str], sizes: Sizes,
              out: str) -> None:
    # Partitions woken by the phases before have fallen asleep again: the rotation
    # pays for its own wakes and sleeps only.
    time.sleep(IDLE_AFTER + 2.0)
    sub = tempfile.mkdtemp(dir=os.path.dirname(out), prefix="rot")
    try:
        run.figures["rotation"], wakes = feed(system, partitions, sub, sizes.rotation, WINDOW)
        run.sizing["rotation_wakes"] = wakes
        progress(f"scale [{run.label}] rotation: {len(wakes)} partitions woke under load, "
                 f"first job {statistics.median(wakes):.2f} s after the first enqueue "
                 f"(median; max {max(wakes):.2f} s)")
    finally:
        shutil.rmtree(sub, ignore_errors=True)


def _restart(run: Run, system: RogerSystem, workdir: str, sizes: Sizes) -> None:
    """Stop the node and start it again: its queues exist now (a node's restart)."""
    assert system.proc is not None
    system.proc.stop(system.stop_grace)
    system.proc = None
    system.start(log_path(workdir, system, f"scale-{sizes.partitions}-again"))
    info = system.wait_ready(timeout=START_WAIT)
    run.figures["restart"] = info["ready"] - info["start"]
    progress(f"scale [{run.label}] the same node started again (its queues exist): "
             f"{run.figures['restart']:.1f} s")


def _alone(run: Run, cfg: Config, workdir: str, queue_type: str, own_broker: bool,
           sizes: Sizes, rates: list[float], attempt: int) -> None:
    """The reference: a node of just REF_PARTITIONS partitions, fed the same way.

    Appends its throughput to `rates`; ``figures["alone"]`` is their mean.
    """
    tag = f"r{queue_type[0]}{attempt}"
    system = RogerSystem(cfg, tag, queue_type, partitions=REF_PARTITIONS, queues=QUEUES,
                         settings=_node_settings(cfg, tag))
    system.delete_queues = not own_broker
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    try:
        system.start(log_path(workdir, system, "scale-alone"))
        info = system.wait_ready(timeout=300.0)
        time.sleep(2.0)
        status, _ = _status(system)
        watcher = status.get("processes", {}).get("roger.watcher", {}).get("pid")
        if watcher:
            run.sizing["watcher_uss_ref"] = _uss([int(watcher)])
        run.sizing["ref_uss"] = procs.memory(list(procs.levels(int(info["root"]))))["uss"]
        _predeclare(system.settings, [(p, "a") for p in system.partitions])
        rate, _ = feed(system, system.partitions, out, sizes.rotation, None,
                       warm_up=REF_WARM_UP)
        rates.append(rate)
        run.sizing["alone_rates"] = list(rates)
        if attempt > 0:  # the rotation's goal is judged against the mean of both
            run.figures["alone"] = statistics.mean(rates)
        progress(f"scale [{run.label}] {REF_PARTITIONS} partitions alone: {rate:,.0f} jobs/s")
    finally:
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- the report


def goals_table(runs: list[Run]) -> list[str]:
    head = "| figure | goal | " + " | ".join(f"{r.label} | met" for r in runs) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(runs)]
    n = runs[0].partitions if runs else 0
    for goal in GOALS:
        cells = [c for r in runs for c in r.cell(goal)]
        lines.append(f"| {goal.figure.format(n=n)} | {goal.goal} | " + " | ".join(cells) + " |")
    lines.append("| the ledger run with idle_after=2 (nothing lost, nothing run twice) | "
                 "all jobs accounted for | " + " | ".join(
                     "run separately: `python -m benchmarks.chaos --idle-after 2` "
                     "(RELIABILITY.md) | -" for _ in runs) + " |")
    return lines


def _kib(mib: float) -> str:
    return f"{mib * 1024:,.0f} KiB"


def sizing_table(runs: list[Run]) -> list[str]:
    """What each dormant partition costs the broker and the node, per run."""
    lines = ["| per partition (2 queues), dormant | " + " | ".join(r.label for r in runs) + " |",
             "|---|" + "---|" * len(runs)]

    def row(what: str, fn: Callable[[Run], str | None]) -> None:
        cells = []
        for r in runs:
            try:
                cells.append(fn(r) or "-")
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")

    def per(r: Run, key: str, sub: str) -> float:
        return (r.sizing[f"{key}_idle"][sub] - r.sizing[f"{key}_before"][sub]) / r.partitions

    row("queues declared (by type)", lambda r: f"{r.sizing['queues'] / r.partitions:g} ("
        + ", ".join(f"{k} {v / r.partitions:g}" for k, v in
                    sorted(r.sizing["queues_by_type"].items())) + ")")
    row("exchanges declared (besides one system exchange per cluster)",
        lambda r: f"{r.sizing['exchanges'] / r.partitions:g}")
    row("broker memory (`rabbitmqctl status` total)",
        lambda r: _kib(per(r, "memory", "total")))
    row("  allocated by its Erlang VM", lambda r: _kib(per(r, "memory", "erlang")))
    row("  of which queue processes (classic + quorum)",
        lambda r: _kib(per(r, "memory", "queue_procs") + per(r, "memory", "quorum_queue_procs")))
    row("  of which quorum ETS / other ETS / binaries", lambda r: " / ".join(
        _kib(per(r, "memory", k)) for k in ("quorum_ets", "other_ets", "binary")))
    row("broker file descriptors, idle (all / quorum files / sockets)", lambda r: " / ".join(
        f"{per(r, 'fds', k):.2f}" for k in ("total", "quorum_files", "sockets")))
    row("node: watcher USS per dormant partition", lambda r: _kib(
        (r.sizing["watcher_uss"] - r.sizing["watcher_uss_ref"])
        / (r.partitions - REF_PARTITIONS)))
    row("node: whole tree USS per partition", lambda r: _kib(r.figures["uss"] / r.partitions))
    lines += ["", "| totals | " + " | ".join(r.label for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    row("broker before -> with the idle node: memory MiB", lambda r: (
        f"{r.sizing['memory_before']['total']:,.0f} -> {r.sizing['memory_idle']['total']:,.0f}"))
    row("broker before -> idle -> after traffic: file descriptors (limit)", lambda r: (
        f"{r.sizing['fds_before']['total']} -> {r.sizing['fds_idle']['total']} -> "
        f"{r.sizing['fds_after_traffic']['total']} ({r.sizing['fds_idle']['limit']:,})"))
    row("  after traffic: sockets / quorum files / other files", lambda r: " / ".join(
        str(r.sizing["fds_after_traffic"][k]) for k in ("sockets", "quorum_files",
                                                         "other_files")))
    row("node's TCP connections to the broker: idle / while partition 0 was busy", lambda r: (
        f"{r.sizing['tcp_to_broker']} / {r.sizing['awake_tcp']} "
        f"({r.sizing['awake_partitions']} partitions awake)"))
    row("watcher USS MiB (N partitions / 10 partitions)", lambda r: (
        f"{r.sizing['watcher_uss']:,.1f} / {r.sizing['watcher_uss_ref']:,.1f}"))
    row("node's own processes, USS MiB", lambda r: ", ".join(
        f"{k} {v:,.1f}" for k, v in sorted(r.sizing["own_uss"].items())) + (
        f", root {r.sizing['root_uss']:,.1f}"))
    row("an awake partition (supervisor, coordinator, 1 consumer + workers), USS MiB",
        lambda r: (f"{r.sizing['awake']['partition_uss']:,.1f} ({r.sizing['awake']['processes']}"
                   f" processes)"))
    row("  of which the awake queue: consumer + its workers, USS MiB", lambda r: (
        f"{r.sizing['awake']['queue_uss']:,.1f} ({r.sizing['awake']['workers']} workers)"))
    row("rotation: first job of a partition after its first enqueue, median / max", lambda r: (
        f"{statistics.median(r.sizing['rotation_wakes']):.2f} s / "
        f"{max(r.sizing['rotation_wakes']):.2f} s"))
    row("`roger ctl status` of the idle node took", lambda r: f"{r.sizing['status_s']:.1f} s")
    row("stopping the node and cleaning up took", lambda r: f"{r.sizing['cleanup_s']:.0f} s")
    return lines


# ------------------------------------------------------------------- the run


def run(cfg: Config, workdir: str) -> Section:
    sizes = Sizes.of(cfg)
    runs: list[Run] = []
    if cfg.baseline is not None:
        progress("scale: the tenants figures get no baseline rows (the baseline revision may "
                 "not know the idle_after setting); the split throughput does")
    label = "quorum, isolated RabbitMQ"
    try:
        with isolated.isolated() as node:
            fds = node.file_descriptors()
            progress(f"scale: {node.label} started, descriptor limit {fds['limit']:,}")
            label = f"quorum, isolated RabbitMQ (fd limit {fds['limit']:,})"
            runs.append(tenants(cfg, workdir, node, "quorum", label, own_broker=True))
    except Exception as e:  # the shared broker's run still comes
        runs.append(_failed(label, sizes, e))
    shared = isolated.shared(cfg.broker_url)
    try:
        limit = shared.file_descriptors()["limit"]
        label = f"classic, shared RabbitMQ (fd limit {limit:,})"
    except (BenchError, KeyError, OSError):
        label = "classic, shared RabbitMQ"
    try:
        runs.append(tenants(cfg, workdir, shared, "classic", label, own_broker=False))
    except Exception as e:
        runs.append(_failed(label, sizes, e))
    finally:
        with rabbit.suppress_errors():
            rabbit.sweep(cfg.broker_url, cfg.name())

    extra = ["### A thousand tenants on one node: the goals (issue 14)", "",
             *goals_table(runs), "",
             "### What a tenant costs", "", *sizing_table(runs), ""]
    split_lines, split = _split(cfg, workdir)
    extra += split_lines
    notes = [
        f"One roger node of {sizes.partitions:,} partitions x 2 queues (2 workers each, "
        f"started lazily), `idle_after` = {IDLE_AFTER:g} s, so it starts with every partition "
        "dormant: no process per partition, the node's watcher consumes every idle queue and "
        "hosts the dormant partitions' coordinators on one connection. Run once per broker "
        "(a run takes minutes; `--repeat` does not apply): quorum queues (roger's default) on "
        "a RabbitMQ node the benchmark starts for itself with a raised descriptor limit "
        "(`benchmarks/isolated.py`), and classic queues on this machine's shared broker.",
        "*Node.start()*: until `roger.Node(settings).start()` returned. USS: summed over the "
        "node's whole process tree, 2 x idle_after after the start, from "
        "/proc/PID/smaps_rollup. Connections: the broker's `list_connections`, counting those "
        "whose client port is a socket of the node's tree.",
        f"First jobs: on {sizes.first_jobs} dormant partitions, one latency job to queue `a` "
        "(the whole partition wakes: supervisor, coordinator, consumer, worker), once it "
        "started one to `b` (an idle queue of that now awake partition), each enqueued "
        f"{GAP * 1000:g} ms after the previous started. Busy queue: partition 0's queue `a`, "
        f"awake, {WARM_UP} warm-up jobs, then {sizes.busy_jobs} jobs {INTERVAL * 1000:g} ms "
        "apart. Latency = perform start - the moment before `Job.enqueue` (which waits for the "
        "publisher confirm). The driver had declared every queue before (a long-lived "
        "producer's declarations are cached), so no figure includes a first declaration.",
        f"Keyed enqueue: `Job.enqueue` (claim at the coordinator, then confirmed publish) of a "
        f"job with a unique queue_key, first to each of {sizes.keyed} fresh dormant partitions "
        "(the watcher's hosted coordinator answers; the job then wakes the partition), "
        "interleaved with two to the awake partition 0 (its coordinator process answers).",
        f"Rotation: {ACTIVE} partitions are kept busy ({BACKLOG} no-op jobs queued each, topped "
        f"up by the driver) for {WINDOW:g} s, then the next {ACTIVE}, for "
        f"{sizes.rotation:g} s; throughput = jobs that ran in that time / its length. Alone: a "
        f"node of just {REF_PARTITIONS} such partitions, fed the same way without rotating, "
        f"measured over {sizes.rotation:g} s after {REF_WARM_UP:g} s of warm-up, once before "
        "the big node and once after it (the mean: quorum queues' throughput drifts by some "
        "20 % within minutes); the rotation starts once the partitions woken by the phases "
        "before have fallen asleep again. All on the same broker.",
        "Broker costs: its memory (`rabbitmqctl status`, by its calculation strategy) and the "
        "open descriptors of its Erlang VM (/proc/PID/fd; quorum files = under its Raft data "
        "directory) just before the node started and once it was idle, divided by the "
        "partitions; on the shared broker others' activity adds noise. Watcher per dormant "
        f"partition: its USS on the big node minus on the {REF_PARTITIONS}-partition node, "
        "divided by the difference in partitions. See docs/operating.md, Sizing.",
    ]
    section = Section("scale", "Scale", Samples(), [], [], notes, extra)
    section.data["split"] = split  # for issue 13's goals table (`benchmarks.goals`)
    return section


def _failed(label: str, sizes: Sizes, error: BaseException) -> Run:
    failed = Run(label, sizes.partitions)
    failed.failed([g.key for g in GOALS], error)
    return failed


SPLIT = "4 partitions x 1 queue x 2 workers"
SINGLE = "1 partition x 1 queue x 4 workers"


def _split(cfg: Config, workdir: str) -> tuple[list[str], Samples]:
    """Throughput of one queue of 4 workers against 4 partitions of 2 (shared broker)."""
    factories: list[tuple[str, Callable[[Config, str], System]]] = [
        *roger_rows(cfg, SPLIT, queue_type="quorum", partitions=4, queues={"default": 2}),
        *roger_rows(cfg, SINGLE, queue_type="quorum", partitions=1, queues={"default": 4}),
    ]
    split = throughput.run_systems(cfg, workdir, "scale-throughput", cfg.scale_jobs, factories)
    tp_metrics = [Metric("steady", "steady jobs/s"), Metric("from_start", "jobs/s from start"),
                  Metric("node_start", "Node.start() s", "{:.2f}")]
    tp_ratios = [Ratio(SPLIT, SINGLE, "steady"), Ratio(SPLIT, SINGLE, "from_start"),
                 *baseline_ratios(cfg, [SPLIT, SINGLE], ["steady", "from_start"])]
    lines = ["### Throughput: one queue of 4 workers, or 4 partitions of 2", "",
             f"{cfg.scale_jobs:,} no-op jobs spread evenly over the partitions' queues "
             "(quorum, roger's default, on the shared broker; roger's default idle_after, so "
             "the queues wake as the jobs arrive), drained as in the throughput benchmark.", ""]
    lines += Section("", "", split, tp_metrics, tp_ratios).markdown().splitlines()[2:]
    return lines, split
