"""profile: where a roger node's processes spend their CPU during the throughput workload.

``python -m benchmarks profile`` fills a queue, starts a node (1 partition,
1 queue, 4 workers) and samples its whole process tree with py-spy
(``pip install py-spy``) while it drains the queue. It prints, for each
role (consumer, workers, ...), the CPU it used (exact, from /proc) and the
functions that used it (sampled): self time, and inclusive time of the
functions below the process's main loop. Then it starts an idle node of 1
partition x 2 queues and shows where each process's private memory (USS) is.
Findings from it are kept by hand in ``benchmarks/PROFILE.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from benchmarks import procs, rabbit
from benchmarks.common import BenchError, Config
from benchmarks.report import progress
from benchmarks.systems import RogerSystem, log_path
from benchmarks.tally import Tally

RATE = 200  # samples per second and process
TOP = 15
ROLES = {0: "root supervisor", 1: "partition supervisor, node services", 3: "workers (4)"}
_LINE = re.compile(r":\d+\)$")
# A process's main loop: inclusive time counts the frames below it, which are its work
# (the frames above are its bootstrap, on every stack).
LOOPS = ("Consumer._loop", "run_worker", "Supervisor.run")


@dataclass
class Role:
    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    pids: set[int] = field(default_factory=set)


def _py_spy() -> str:
    found = shutil.which("py-spy") or procs.venv_script("py-spy")
    if not os.path.exists(found):
        raise BenchError("py-spy is not installed: pip install py-spy")
    return found


def parse(path: str) -> dict[str, Role]:
    """Aggregate py-spy's raw (collapsed) stacks by role in the node's tree."""
    stacks: list[tuple[int, int, list[str], int]] = []  # (pid, depth, frames, count)
    consumers: set[int] = set()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            chain = [fr for fr in frames if fr.startswith("process ")]
            code = [_LINE.sub(")", fr) for fr in frames
                    if not fr.startswith(("process ", "thread "))]
            pid = int(chain[-1].split(":")[0].split()[1])
            stacks.append((pid, len(chain) - 1, code, int(count)))
            if any(fr.startswith("Consumer.") for fr in code):
                consumers.add(pid)
    roles: dict[str, Role] = defaultdict(Role)
    for pid, depth, code, count in stacks:
        # Depth 2 holds the queue's consumer and the partition's coordinator.
        name = ("consumer" if pid in consumers else "coordinator") if depth == 2 \
            else ROLES.get(depth, "?")
        role = roles[name]
        role.samples += count
        role.pids.add(pid)
        if code:
            role.self_time[code[-1]] += count
            below = next((code[i + 1:] for i in range(len(code) - 1, -1, -1)
                          if code[i].startswith(LOOPS)), [])
            for fr in set(below):
                role.inclusive[fr] += count
    return roles


def render(roles: dict[str, Role], cpu: dict[str, float], wall: float, n: int) -> str:
    lines = [f"{n:,} no-op jobs in {wall:.1f} s ({n / wall:,.0f} jobs/s), sampled at {RATE} Hz.",
             "", "| role | processes | CPU s (from /proc) | CPU µs/job | py-spy samples |",
             "|---|---|---|---|---|"]
    order = sorted(roles, key=lambda r: -roles[r].samples)
    for name in order:
        role = roles[name]
        lines.append(f"| {name} | {len(role.pids)} | {cpu.get(name, 0.0):.2f} | "
                     f"{cpu.get(name, 0.0) / n * 1e6:.0f} | {role.samples} |")
    for name in order:
        role = roles[name]
        if role.samples < 20:
            continue
        lines += ["", f"### {name}: self time (share of its samples)", ""]
        lines += [f"- {c / role.samples:5.1%} {fr}" for fr, c in role.self_time.most_common(TOP)]
        lines += ["", f"### {name}: inclusive time below its main loop", ""]
        lines += [f"- {c / role.samples:5.1%} {fr}" for fr, c in role.inclusive.most_common(TOP)]
    return "\n".join(lines) + "\n"


def _cpu_by_pid(root: int) -> dict[int, tuple[int, float]]:
    """pid -> (depth in the node's tree, CPU seconds so far)."""
    return {pid: (depth, procs.cpu_seconds([pid])) for pid, depth in procs.levels(root).items()}


def _cpu_by_role(cpu: dict[int, tuple[int, float]], consumers: set[int]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for pid, (depth, seconds) in cpu.items():
        name = ("consumer" if pid in consumers else "coordinator") if depth == 2 \
            else ROLES.get(depth, "?")
        out[name] += seconds
    return out


def run(cfg: Config, workdir: str, queue_type: str = "quorum") -> str:
    spy_bin = _py_spy()
    n = max(cfg.throughput_jobs, 10_000) * 2  # long enough for a few thousand samples
    system = RogerSystem(cfg, "prof", queue_type)
    out = tempfile.mkdtemp(dir=workdir, prefix="rec")
    raw = os.path.join(workdir, f"profile-{queue_type}.txt")
    spy = None
    try:
        system.enqueue_all([rabbit.body_of(i, out) for i in range(n)])
        rabbit.wait_total(system.url, system.queue_names(), n)
        proc = system.start(log_path(workdir, system, "profile"))
        root = int(system.wait_ready()["root"])
        spy = subprocess.Popen(
            [spy_bin, "record", "--pid", str(root), "--subprocesses", "--nonblocking",
             "--rate", str(RATE), "--format", "raw", "--output", raw],
            stdout=subprocess.DEVNULL, stderr=open(raw + ".log", "wb"))  # noqa: SIM115
        tally = Tally(out)
        tally.wait(n, timeout=120 + n / 100, alive=proc.alive)
        wall = max(tally.done.values()) - proc.started
        cpu = _cpu_by_pid(root)
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(60)
        roles = parse(raw)
        progress(f"profiled {n:,} jobs ({queue_type} queue)")
        by_role = _cpu_by_role(cpu, roles["consumer"].pids if "consumer" in roles else set())
        return f"## Profile data ({queue_type} queue)\n\n" + render(roles, by_role, wall, n)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        system.cleanup()
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------ memory

def _private_by_mapping(pid: int) -> Counter[str]:
    """KiB of private (USS) pages of `pid`, by mapping: a file's name, [heap], [anon]..."""
    out: Counter[str] = Counter()
    name = "?"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head, _, rest = line.partition(" ")
                if not head.endswith(":"):  # a mapping: range perms offset dev inode [path]
                    path = rest.split()[4:]
                    name = os.path.basename(path[0]) if path else "[anon]"
                elif head in ("Private_Clean:", "Private_Dirty:"):
                    out[name] += int(rest.split()[0])
    except OSError:
        pass
    return out


def memory(cfg: Config, queue_type: str = "classic") -> str:
    """USS of each process of an idle node (1 partition x 2 queues), by mapping."""
    system = RogerSystem(cfg, "mem", queue_type, queues={"a": 2, "b": 2})
    try:
        system.start(log_path(tempfile.gettempdir(), system, "memory"))
        root = int(system.wait_ready()["root"])
        time.sleep(2.0)  # let start-up work finish: the figure is for an idle node
        tree = procs.levels(root)
        names = {1: "node service or partition supervisor", 2: "consumer or coordinator"}
        lines = [f"## Memory of an idle node ({queue_type} queues, 1 partition x 2 queues)", "",
                 "| depth | role | USS MiB | largest private mappings (MiB) |", "|---|---|---|---|"]
        for pid, depth in sorted(tree.items(), key=lambda item: (item[1], item[0])):
            by_map = _private_by_mapping(pid)
            top = ", ".join(f"{k} {v / 1024:.1f}" for k, v in by_map.most_common(3))
            role = "root supervisor" if depth == 0 else names.get(depth, "worker")
            lines.append(f"| {depth} | {role} | {sum(by_map.values()) / 1024:.1f} | {top} |")
        progress(f"measured an idle node ({queue_type} queues)")
        return "\n".join(lines) + "\n"
    finally:
        system.cleanup()
