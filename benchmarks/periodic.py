"""periodic: the issue's periodic goals at full length (``python -m benchmarks periodic``).

Not part of a plain ``python -m benchmarks`` (it takes about 16 minutes,
``--quick``: about 3). Two phases on this machine's broker:

1. three nodes serve one partition with an every-minute entry
   (``* * * * *``) for 10 slots; before the 4th and the 8th slot the process
   holding the active coordinator is SIGKILLed. Goal: exactly 10 firings,
   none twice. Also measured: how late each job was enqueued after its slot
   (the coordinator's lag), and the slots right after a kill.
2. the whole cluster stops for a little over 3 slots, then one node starts.
   Goal: exactly 1 catch-up firing for the missed slots.

``--quick`` runs the same with a 6-second entry (``*/6 * * * * *``, seconds
field first) and the cluster down for 3 of those slots.

The nodes have ``idle_after=0``: the coordinators are processes of their
own, the ones the goal kills. (With idle partitions the watcher hosts them;
``tests/roger/test_periodic.py`` covers that hand-over.)
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import rabbit
from benchmarks.common import Config
from benchmarks.report import progress

NODES = 3
SLOTS = 10
KILL_BEFORE = (4, 8)  # slot numbers (1-based) before which the active coordinator dies
DOWN_SLOTS = 3


def run(cfg: Config, workdir: str) -> str:
    """Both phases; returns the markdown section."""
    from roger import Node, Settings, config

    step = 6 if cfg.quick else 60
    cron = "*/6 * * * * *" if cfg.quick else "* * * * *"
    partition = cfg.name("periodic")
    out = tempfile.mkdtemp(prefix="periodic-", dir=workdir)
    entry = {"name": "bench", "cron": cron, "job": "bench:Periodic", "args": {"out": out},
             "partition": partition}

    def settings(i: int) -> Settings:
        return Settings(broker_url=cfg.broker_url, imports=["benchmarks.jobs"],
                        partitions={partition: {"default": 1}}, periodic=[entry],
                        node_name=cfg.name("periodic", i), idle_after=0,
                        state_dir=os.path.join(workdir, "state"), shutdown_timeout=5.0)

    config.configure(settings(0))
    nodes = [Node(settings(i)).start() for i in range(NODES)]
    try:
        first = _next_slot(step)
        progress(f"periodic: {NODES} nodes up; slots from {_hms(first)}, every {step} s")
        killed = []
        for number in range(1, SLOTS + 1):
            slot = first + (number - 1) * step
            if number in KILL_BEFORE:
                _sleep_until(slot - step / 2)
                pid = _active_coordinator(nodes, partition)
                os.kill(pid, signal.SIGKILL)
                killed.append((number, pid, time.time()))
                progress(f"periodic: killed the active coordinator (pid {pid}) before slot "
                         f"{number}")
        _sleep_until(first + (SLOTS - 1) * step + min(step / 2, 10))
        window = [first + i * step for i in range(SLOTS)]
        seen = _fired(out)
        in_window = [s for s, _ in seen if first <= s <= window[-1]]
        lags = [lag for s, lag in seen if first <= s <= window[-1]]
        after_kill = [lag for s, lag in seen if s in {first + (n - 1) * step
                                                      for n, _, _ in killed}]
        # Phase 2: everything down across DOWN_SLOTS slots, then one node.
        for node in nodes:
            node.stop(timeout=30)
        stopped = time.time()
        nodes = []
        down_from = _next_slot(step, stopped)
        _sleep_until(down_from + (DOWN_SLOTS - 1) * step + min(step / 4, 5))
        missed = [down_from + i * step for i in range(DOWN_SLOTS)]
        nodes = [Node(settings(NODES)).start()]
        # Past the next regular slot too: its firing must not count as a catch-up.
        _sleep_until(missed[-1] + step + min(step / 2, 10))
        catch_up = [s for s, _ in _fired(out) if down_from <= s <= missed[-1]]
    finally:
        for node in nodes:
            node.stop(timeout=30)
        with rabbit.suppress_errors():
            rabbit.sweep(cfg.broker_url, cfg.name())
    return _section(cfg, step, cron, window, in_window, lags, after_kill, killed, missed,
                    catch_up)


def _section(cfg: Config, step: int, cron: str, window: list[float], in_window: list[int],
             lags: list[float], after_kill: list[float], killed: list, missed: list[float],
             catch_up: list[int]) -> str:
    once = sorted(set(in_window)) == window and len(in_window) == len(window)
    twice = len(in_window) - len(set(in_window))
    ms = [lag * 1000 for lag in lags]
    lines = [
        "## Periodic jobs", "",
        f"Produced by `python -m benchmarks periodic{' --quick' if cfg.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: {NODES} nodes on one partition, entry `{cron}` "
        f"(a slot every {step} s), coordinators SIGKILLed before slots "
        f"{', '.join(str(n) for n, _, _ in killed)}; then the whole cluster down across "
        f"{DOWN_SLOTS} slots and one node back. Machine shared with other test runs.", "",
        "| figure | goal | measured |", "|---|---|---|",
        f"| firings in {SLOTS} slots, coordinator killed {len(killed)} times | exactly "
        f"{SLOTS}, none twice | {len(in_window)} firings, {len(set(in_window))} distinct slots, "
        f"{twice} twice, {'every slot once' if once else 'NOT every slot once'} |",
        f"| catch-up after the cluster was down across {DOWN_SLOTS} slots | exactly 1 | "
        f"{len(catch_up)} firing(s){_slots_note(catch_up, missed)} |",
    ]
    if ms:
        lines.append(f"| enqueue lag after the slot (all slots) | - | median "
                     f"{statistics.median(ms):.0f} ms, max {max(ms):.0f} ms |")
    if after_kill:
        lines.append(f"| enqueue lag of the slots right after a kill | - | "
                     f"{', '.join(f'{lag * 1000:.0f} ms' for lag in after_kill)} |")
    return "\n".join(lines) + "\n"


def _slots_note(catch_up: list[int], missed: list[float]) -> str:
    if catch_up == [int(missed[-1])]:
        return " (the latest missed slot)"
    return f" (slots {catch_up}; missed {[int(m) for m in missed]})"


def _fired(out: str) -> list[tuple[int, float]]:
    """(slot, enqueue lag in seconds) of every job that ran, repeats kept."""
    rows = []
    for path in Path(out).glob("*.rec"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((int(parts[0]), float(parts[2])))
    return sorted(rows)


def _active_coordinator(nodes: list, partition: str) -> int:
    """The pid of the coordinator process that knows it is active (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in nodes:
            running = node.status()["running"].get(partition, {})
            if running.get("coordinator", {}).get("active"):
                return running["coordinator_pid"]
        time.sleep(0.2)  # polled: the coordinators tell nobody when they become active
    raise RuntimeError("no coordinator knows it is active within 30 s")


def _next_slot(step: int, after: float | None = None) -> float:
    now = time.time() if after is None else after
    return (int(now) // step + 1) * step


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 1.0))


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))
