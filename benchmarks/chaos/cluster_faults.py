"""The ledger run on a 3-node RabbitMQ cluster (``--cluster``, issue 17).

`ClusterInjector` adds the faults of one broker node to roger's own, and
runs the broker-wide ones (close every connection, memory alarm) on every
node of the private cluster: nothing here touches the machine's shared
RabbitMQ. `completion_pauses` measures, after the run, how long each
queue went without a completion around each broker node fault.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kombu

from benchmarks.chaos.config import (
    BROKER_FREEZE,
    BROKER_NODE_FAULTS,
    CLOSE_CONNECTIONS,
    MEMORY_ALARM,
    ROLLING_RESTART,
)
from benchmarks.chaos.faults import Fault, Injector, Run, Skip
from benchmarks.chaos.ledger import Ledger
from benchmarks.chaos.nodes import wait_until
from benchmarks.cluster import RabbitCluster

BACKLOG = (200, 2000)  # jobs published at once for a backlog: jobs / 5, within these
# A queue's completions are looked at from the fault's start to this long after its end.
SETTLE = 10.0
# The faults whose window lasts until roger is whole again, and how long that may take.
BROKER_WIDE = BROKER_NODE_FAULTS | {CLOSE_CONNECTIONS, MEMORY_ALARM}
RECOVERY = 60.0


class ClusterInjector(Injector):
    """The injector of a run on `cluster`; the broker faults strike its nodes."""

    def __init__(self, run: Run, cluster: RabbitCluster) -> None:
        super().__init__(run)
        self.cluster = cluster
        self.restarts: list[float] = []  # seconds each node restart took (rolling restarts)

    def broker_all(self, *args: str) -> None:
        """``rabbitmqctl args`` on every node of the cluster that answers, all at once.

        In turn, a command that closes connections would chase them from
        node to node as they reconnect, one long fault instead of one.
        """
        nodes = [node for i, node in enumerate(self.cluster.nodes)
                 if self.cluster.alive(i) and i not in self.cluster.frozen]
        with ThreadPoolExecutor(len(nodes) or 1) as pool:
            for done in [pool.submit(node.ctl, *args) for node in nodes]:
                done.result()

    def inject(self, kind: str) -> Fault:
        """Strike, then wait (bounded) until both roger nodes serve every queue again.

        The fault's window runs until then: jobs rerun while roger recovers
        from it are its doing.
        """
        fault = super().inject(kind)
        if fault.injected and kind in BROKER_WIDE:
            began = time.monotonic()
            healthy = wait_until(
                lambda: all(n.healthy(self.run.partitions) for n in self.run.nodes), RECOVERY)
            fault.end = time.time()
            fault.note += (f"; roger whole again {time.monotonic() - began:.0f} s later"
                           if healthy else f"; roger NOT whole within {RECOVERY:g} s")
        return fault

    def _down_for(self) -> float:
        return self.rng.uniform(*self.cfg.down_for)

    def _name(self, i: int) -> str:
        return str(self.cluster.nodes[i].name).split("@")[0]

    def _broker_kill(self) -> tuple[str, str]:
        i = self.rng.randrange(len(self.cluster.nodes))
        down = self._down_for()
        self._strike()
        self.cluster.kill(i)
        time.sleep(down)
        started = time.monotonic()
        self.cluster.restart(i)
        self.cluster.wait_running()
        return self._name(i), f"SIGKILL, down {down:.0f} s, boot {time.monotonic() - started:.0f} s"

    def _broker_stop_busiest(self) -> tuple[str, str]:
        counts = self.cluster.connections()
        if not counts:
            raise Skip("no node answered list_connections")
        i, held = counts.most_common(1)[0]
        down = self._stopped_for(i)
        return self._name(i), (f"held {held} of {sum(counts.values())} connections; "
                               f"stop_app, down {down:.0f} s")

    def _leader_stop(self) -> tuple[str, str]:
        mains = {f"{p}-{q}": (p, q) for p, q in self.run.targets}
        stats = {n: s for n, s in self.cluster.queue_stats("chaos-").items() if n in mains}
        if not stats:
            raise Skip("no main queue found")
        name = max(stats, key=lambda n: stats[n][0])
        leader = stats[name][1]
        want = max(BACKLOG[0], min(BACKLOG[1], self.cfg.jobs // 5))
        if stats[name][0] < want // 2:
            # Make one: a burst of quick ledger jobs, more than the workers run
            # in the time it takes to publish them and strike.
            p, q = mains[name]
            burst = [self.run.ledger.make(p, q, 0.01) for _ in range(want)]
            if not self.run.ledger.publish(burst, self.run.producer_settings, give_up=60.0):
                raise Skip("could not publish the backlog")
        backlog = self._depth(name)
        i = self.cluster.index(leader)
        down = self._stopped_for(i)
        return self._name(i), f"leader of {name} ({backlog} queued); stop_app, down {down:.0f} s"

    def _stopped_for(self, i: int) -> float:
        """Strike: stop broker node `i`'s app for a random spell, then start it; the spell."""
        down = self._down_for()
        self._spell(down, lambda: self.cluster.stop_app(i), lambda: self.cluster.start_app(i))
        return down

    def _spell(self, seconds: float, begin: Callable[[], Any], end: Callable[[], Any]) -> None:
        """Strike: `begin`, `seconds` later `end` (whatever happened meanwhile)."""
        self._strike()
        begin()
        try:
            time.sleep(seconds)
        finally:
            end()

    def _depth(self, queue: str) -> int | str:
        """Messages ready in `queue` now (a passive declare: milliseconds, not a CLI call)."""
        try:
            with kombu.Connection(self.cfg.broker_url, connect_timeout=5) as conn:
                return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
        except Exception:
            return "?"

    def _broker_freeze(self) -> tuple[str, str]:
        i = self.rng.randrange(len(self.cluster.nodes))
        stop_for = 3 * self.cfg.heartbeat + 1.0
        self._spell(stop_for, lambda: self.cluster.freeze(i), lambda: self.cluster.thaw(i))
        return self._name(i), f"SIGSTOP {stop_for:g} s, SIGCONT"

    def _rolling_restart(self) -> tuple[str, str]:
        took = []
        self._strike()
        for i in range(len(self.cluster.nodes)):
            # As a rolling upgrade does: never stop a node whose queues would lose a majority.
            if not self.cluster.await_quorum_safe(i):
                self.run.say(f"rolling restart: {self._name(i)} still quorum-critical")
            took.append(self.cluster.restart_gracefully(i))
        self.restarts += took
        return "all 3 nodes", "rabbitmqctl stop + boot, in turn: " + ", ".join(
            f"{t:.0f} s" for t in took)

    def release(self) -> None:
        super().release()
        for i in list(self.cluster.frozen):
            self.cluster.thaw(i)

    def restore(self) -> list[str]:
        """Every node running and out of any alarm, whatever state the faults left."""
        problems = []
        for i, node in enumerate(self.cluster.nodes):
            try:
                if not self.cluster.alive(i):
                    self.cluster.restart(i)
                node.ctl("start_app", timeout=120)
                node.ctl("set_vm_memory_high_watermark", "0.4")
            except Exception as e:  # keep restoring the rest
                problems.append(f"{self._name(i)}: {e}")
        try:
            self.cluster.wait_running()
        except Exception as e:
            problems.append(str(e))
        return problems


@dataclass
class Pause:
    """How long the queues went without completions around one broker node fault."""

    fault: Fault
    gap: float  # the longest time a queue completed nothing
    gap_queue: str
    stall: float  # ...of which it had a confirmed job waiting
    stall_queue: str
    goal: float  # NaN: none


def completion_pauses(faults: list[Fault], ledger: Ledger,
                      goal: float, restarts: list[float]) -> list[Pause]:
    """For each broker node fault, the longest gap and stall in a queue's completions.

    Looked at from the fault's start to `SETTLE` seconds after its end, plus
    the first completion beyond (a pause may outlast the window). A *gap*
    counts every second without a completion, including any the producer
    caused by not publishing; a *stall* only those while the queue had work:
    between two completions ``a < b`` it stalled from ``a``, or from when the
    oldest job still waiting at ``b`` was confirmed if later. The goal of a
    node fault is `goal` (2 x heartbeat + connect timeout); a rolling
    restart's is the longest single node restart; a frozen node has none
    (NaN): it is not dead, and is only given up after 2 heartbeats.
    """
    queues: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (done at, confirmed at)
    for job_id, runs in ledger.completions.items():
        for i, c in enumerate(sorted(runs, key=lambda c: c.t)):
            # A rerun waits for nothing: it is progress, not pending work.
            waited = ledger.confirmed_at.get(job_id, c.t) if i == 0 else c.t
            queues[f"{c.partition}-{c.queue}"].append((c.t, waited))
    out = []
    for f in faults:
        if not f.injected or f.kind not in BROKER_NODE_FAULTS:
            continue
        gaps = {q: _longest_stall(sorted(d), f.start, f.end + SETTLE, waiting=False)
                for q, d in queues.items()}
        stalls = {q: _longest_stall(sorted(d), f.start, f.end + SETTLE)
                  for q, d in queues.items()}
        gap_queue = max(gaps, key=gaps.__getitem__, default="-")
        stall_queue = max(stalls, key=stalls.__getitem__, default="-")
        target = max(restarts) if f.kind == ROLLING_RESTART and restarts else goal
        if f.kind == BROKER_FREEZE:
            target = math.nan
        out.append(Pause(f, gaps.get(gap_queue, 0.0), gap_queue, stalls.get(stall_queue, 0.0),
                         stall_queue, target))
    return out


def _longest_stall(done: list[tuple[float, float]], start: float, end: float,
                   waiting: bool = True) -> float:
    """The longest stall in `done` (sorted (done at, confirmed at)) from `start` to `end`.

    With ``waiting=False``, the longest gap between completions instead.
    """
    oldest = float("inf")  # the oldest confirm among the jobs done at or after each point
    waiting_from = [0.0] * len(done)
    for i in range(len(done) - 1, -1, -1):
        oldest = min(oldest, done[i][1])
        waiting_from[i] = oldest
    worst, previous = 0.0, start
    for i, (t, _) in enumerate(done):
        if t <= start:
            continue
        worst = max(worst, t - max(previous, waiting_from[i] if waiting else previous))
        previous = t
        if t > end:  # the first completion past the window ends it
            break
    return worst
