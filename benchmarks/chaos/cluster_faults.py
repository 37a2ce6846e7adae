"""The ledger run on a 3-node RabbitMQ cluster (``--cluster``, issue 17).

`ClusterInjector` adds the faults of one broker node to roger's own, and
runs the broker-wide ones (close every connection, memory alarm) on every
node of the private cluster: nothing here touches the machine's shared
RabbitMQ. `completion_pauses` measures, after the run, how long each
queue went without a completion around each broker node fault.
"""

from __future__ import annotations

import time
from collections import defaultdict

from benchmarks.chaos.config import BROKER_NODE_FAULTS, ROLLING_RESTART
from benchmarks.chaos.faults import Fault, Injector, Run, Skip
from benchmarks.chaos.ledger import Ledger
from benchmarks.cluster import RabbitCluster

BACKLOG = 300  # jobs published at once to give a queue a backlog before its leader stops
# A queue's completions are looked at from the fault's start to this long after its end.
SETTLE = 10.0


class ClusterInjector(Injector):
    """The injector of a run on `cluster`; the broker faults strike its nodes."""

    def __init__(self, run: Run, cluster: RabbitCluster) -> None:
        super().__init__(run)
        self.cluster = cluster
        self.restarts: list[float] = []  # seconds each node restart took (rolling restarts)

    def broker_all(self, *args: str) -> None:
        """``rabbitmqctl args`` on every node of the cluster that answers."""
        for i, node in enumerate(self.cluster.nodes):
            if self.cluster.alive(i) and i not in self.cluster.frozen:
                node.ctl(*args)

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
        down = self._down_for()
        self._strike()
        self.cluster.stop_app(i)
        try:
            time.sleep(down)
        finally:
            self.cluster.start_app(i)
        return self._name(i), (f"held {held} of {sum(counts.values())} connections; "
                               f"stop_app, down {down:.0f} s")

    def _leader_stop(self) -> tuple[str, str]:
        mains = {f"{p}-{q}": (p, q) for p, q in self.run.targets}
        stats = {n: s for n, s in self.cluster.queue_stats("chaos-").items() if n in mains}
        if not stats:
            raise Skip("no main queue found")
        name = max(stats, key=lambda n: stats[n][0])
        if stats[name][0] < BACKLOG // 2:  # make one: a burst of quick ledger jobs
            p, q = mains[name]
            burst = [self.run.ledger.make(p, q, 0.01) for _ in range(BACKLOG)]
            if not self.run.ledger.publish(burst, self.run.producer_settings, give_up=60.0):
                raise Skip("could not publish the backlog")
            stats = self.cluster.queue_stats(name)
        backlog, leader = stats[name]
        i = self.cluster.index(leader)
        down = self._down_for()
        self._strike()
        self.cluster.stop_app(i)
        try:
            time.sleep(down)
        finally:
            self.cluster.start_app(i)
        return self._name(i), f"leader of {name} ({backlog} queued); stop_app, down {down:.0f} s"

    def _broker_freeze(self) -> tuple[str, str]:
        i = self.rng.randrange(len(self.cluster.nodes))
        stop_for = 3 * self.cfg.heartbeat + 1.0
        self._strike()
        self.cluster.freeze(i)
        try:
            time.sleep(stop_for)
        finally:
            self.cluster.thaw(i)
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


def completion_pauses(faults: list[Fault], ledger: Ledger,
                      goal: float, restarts: list[float]) -> list[tuple[Fault, str, float, float]]:
    """For each broker node fault: (fault, queue, longest pause, goal).

    A queue's pause is the longest time without one of its jobs completing,
    from the fault's start to `SETTLE` seconds after its end; the queue
    whose pause is longest is named. The goal of a node fault is `goal`
    (2 x heartbeat + connect timeout); a rolling restart's is the longest
    single node restart (no partition waits longer than one node's restart).
    """
    by_queue: dict[str, list[float]] = defaultdict(list)
    for runs in ledger.completions.values():
        for c in runs:
            by_queue[f"{c.partition}-{c.queue}"].append(c.t)
    for times in by_queue.values():
        times.sort()
    out = []
    for f in faults:
        if not f.injected or f.kind not in BROKER_NODE_FAULTS:
            continue
        worst, where = 0.0, "-"
        for queue, times in by_queue.items():
            after = [t for t in times if t > f.start]
            # ...and the first completion past the window: a stall may outlast it.
            window = [f.start] + [t for t in after if t <= f.end + SETTLE] + \
                [t for t in after if t > f.end + SETTLE][:1]
            gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
            if gaps and max(gaps) > worst:
                worst, where = max(gaps), queue
        target = max(restarts) if f.kind == ROLLING_RESTART and restarts else goal
        out.append((f, where, worst, target))
    return out

