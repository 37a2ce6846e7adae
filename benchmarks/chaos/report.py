"""The ledger run's outcome (`Report`) and its rendering as Markdown."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.chaos.cluster_faults import Pause
from benchmarks.chaos.config import (
    BROKER_FREEZE,
    BROKER_KILL,
    BROKER_RESTART,
    BROKER_STOP_BUSIEST,
    CLOSE_CONNECTIONS,
    EXTERNAL,
    KILL_CONSUMER,
    KILL_NODE,
    KILL_PARTITION,
    KILL_WORKER,
    LEADER_STOP,
    MEMORY_ALARM,
    RESTART_PARTITION,
    ROLLING_RESTART,
    STOP_CONSUMER,
    ChaosConfig,
)
from benchmarks.chaos.faults import Fault

# Why each fault kind can make a finished job run again (the output's legend).
WHY_DUPLICATES = {
    KILL_WORKER: "the worker died after the job's work, before reporting its outcome: "
                 "the consumer settles it as crashed and retries it",
    KILL_CONSUMER: "jobs finished but not yet acked die with the consumer's connection; "
                   "RabbitMQ redelivers them",
    KILL_PARTITION: "its consumers die with it: finished, unacked jobs are redelivered",
    KILL_NODE: "every consumer of the node dies: finished, unacked jobs are redelivered",
    CLOSE_CONNECTIONS: "acks of jobs finishing while the connection drops are lost; "
                       "RabbitMQ redelivers them",
    BROKER_RESTART: "as close_connections, for every connection, plus the broker's restart",
    MEMORY_ALARM: "a consumer's blocked connection cannot confirm a retry in time: the "
                  "consumer ends and its finished, unacked jobs are redelivered",
    STOP_CONSUMER: "RabbitMQ declares the frozen consumer dead after 2 missed heartbeats and "
                   "redelivers its jobs, while its workers (not frozen) finish them",
    RESTART_PARTITION: "none expected: the partition drains gracefully",
    EXTERNAL: "another program's fault on the shared broker (the nodes' logs show "
              "connections dropped outside this run's own faults)",
    BROKER_KILL: "the connections to the killed node die at once: jobs that finished but "
                 "whose ack had not reached RabbitMQ are redelivered",
    BROKER_STOP_BUSIEST: "stop_app closes every connection to the node: finished, unacked "
                         "jobs are redelivered",
    LEADER_STOP: "as broker_stop_busiest; the queue's new leader redelivers what the old one "
                 "had delivered but not seen acked",
    BROKER_FREEZE: "connections to the frozen node miss their heartbeats and are dropped "
                   "by the client: unacked jobs are redelivered",
    ROLLING_RESTART: "each node's stop closes its connections: finished, unacked jobs are "
                     "redelivered",
    "producer_republish": "the producer re-published records whose confirm never came "
                          "(a memory alarm, a dropped connection, a broker restart): the "
                          "first publish was queued after all, so two copies of the id ran",
}


@dataclass
class Report:
    """The outcome of a ledger run: counts, faults and duplicate causes."""

    cfg: ChaosConfig
    confirmed: int = 0
    done_once: int = 0
    duplicated: int = 0
    extra_runs: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> jobs
    still_queued: int = 0
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    delayed: int = 0  # confirmed jobs enqueued with a delay
    early: int = 0  # runs of delayed jobs that started before their due time (must be 0)
    early_ids: list[str] = field(default_factory=list)
    unconfirmed_done: int = 0
    unconfirmed: int = 0  # publishes given up
    dup_causes: Counter[str] = field(default_factory=Counter)
    overlapping: Counter[str] = field(default_factory=Counter)  # cause -> overlapping reruns
    copies_aside: Counter[str] = field(default_factory=Counter)  # dead-lettered copies of done jobs
    faults: list[Fault] = field(default_factory=list)
    external: list[Fault] = field(default_factory=list)  # other programs' broker faults
    producer_errors: int = 0  # publishes that raised BrokerError (and were retried)
    t0: float = 0.0
    publish_seconds: float = 0.0
    completions: int = 0
    completion_seconds: float = 0.0
    drain_seconds: float = 0.0
    run_seconds: float = 0.0
    recovered: bool = False  # every node served every partition again after the faults
    notes: list[str] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)  # on a cluster, per broker node fault

    @property
    def dead(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def injected_kinds(self) -> set[str]:
        return {f.kind for f in self.faults if f.injected}

    def render(self) -> str:
        """The ledger table, the load, the faults and the duplicates' causes (Markdown)."""
        c = self.cfg
        rate = self.confirmed / self.publish_seconds if self.publish_seconds else 0.0
        done_rate = self.completions / self.completion_seconds if self.completion_seconds else 0
        dead = ", ".join(f"{r}: {n}" for r, n in sorted(self.dead_lettered.items())) or "-"
        lines = [
            f"{c.jobs} numbered jobs into 2 partitions x 2 queues, 2 nodes x {c.workers} "
            f"workers per queue, {c.duration:g} s of faults "
            f"({'one of each kind, fixed order' if c.deterministic else f'random, seed {c.seed}'}"
            f"), heartbeat {c.heartbeat:g} s"
            f"{f', idle_after {c.idle_after:g} s' if c.idle_after else ''}"
            f"; run took {self.run_seconds:.0f} s "
            f"(drain {self.drain_seconds:.0f} s). Both nodes serving every queue again at "
            f"the end: {'yes' if self.recovered else 'NO'}.",
            "",
            "| outcome | jobs |",
            "| --- | ---: |",
            f"| confirmed (enqueue returned) | {self.confirmed} |",
            f"| done once | {self.done_once} |",
            f"| done more than once (duplicated) | {self.duplicated} "
            f"({self.extra_runs} extra runs) |",
            f"| dead-lettered | {self.dead} ({dead}) |",
            f"| still queued at the deadline | {self.still_queued} |",
            f"| **lost** | **{self.lost}** |",
            f"| of the confirmed, delayed (1-{c.max_delay} s) | {self.delayed} |",
            f"| **runs of a delayed job before its due time** | **{self.early}** |",
            "",
            f"Load held: {self.confirmed} jobs confirmed over {self.publish_seconds:.0f} s "
            f"({rate:.1f} jobs/s published under faults); {self.completions} runs completed "
            f"over {self.completion_seconds:.0f} s ({done_rate:.1f} jobs/s).",
        ]
        if self.unconfirmed or self.unconfirmed_done:
            lines.append(f"Publishes given up: {self.unconfirmed}; of the never-confirmed "
                         f"ids, {self.unconfirmed_done} ran anyway (not counted above).")
        lines += ["", "| # | t (s) | fault | target | outcome |",
                  "| ---: | ---: | --- | --- | --- |"]
        for i, f in enumerate(self.faults, 1):
            lines.append(f"| {i} | {f.start - self.t0:.1f} | {f.kind} | {f.target or '-'} | "
                         f"{f.note}{'' if f.injected else ' (not injected)'} |")
        kinds = Counter(f.kind for f in self.faults if f.injected)
        lines += ["", "Faults injected: " + ", ".join(
            f"{k} x{kinds[k]}" for k in c.kinds) + f". Producer publishes that raised "
            f"BrokerError and were retried with the same records: {self.producer_errors}."]
        if self.external:
            lines.append("Broker disruptions by other programs on the shared RabbitMQ, seen in "
                         "the nodes' logs: " + ", ".join(
                             f"t={f.start - self.t0:.0f}-{f.end - self.t0:.0f} s"
                             for f in self.external) + ".")
        lines += self._render_pauses()
        lines += ["", "| duplicates caused by | extra runs | why |", "| --- | ---: | --- |"]
        for cause, n in self.dup_causes.most_common():
            lines.append(f"| {cause} | {n} | {WHY_DUPLICATES.get(cause, 'NO FAULT EXPLAINS IT')} |")
        if not self.dup_causes:
            lines.append("| - | 0 | |")
        lines.append("")
        overlaps = ", ".join(f"{c}: {n}" for c, n in self.overlapping.most_common())
        lines.append(f"Reruns that started before the previous run ended: "
                     f"{sum(self.overlapping.values())}{f' ({overlaps})' if overlaps else ''}. "
                     "Two copies of one job id (a re-published batch) can be delivered to "
                     "two nodes at once; a redelivery can start while a worker of a consumer "
                     "that lost its connection (or is frozen) still runs.")
        if self.copies_aside:
            aside = ", ".join(f"{r}: {n}" for r, n in self.copies_aside.most_common())
            lines.append(f"Dead-lettered copies of jobs that ran anyway (counted as done): "
                         f"{sum(self.copies_aside.values())} ({aside}).")
        for note in self.notes:
            lines.append(f"\nNote: {note}")
        if self.early_ids:
            lines.append(f"\nEarly runs (first 20): {', '.join(self.early_ids[:20])}")
        if self.lost_ids:
            lines.append(f"\nLost ids (first 20): {', '.join(self.lost_ids[:20])}")
        return "\n".join(lines) + "\n"

    def _render_pauses(self) -> list[str]:
        """The cluster's table: how long a queue went without completions after each fault."""
        if not self.pauses:
            return []
        lines = ["", "| t (s) | broker node fault | target | longest gap in a queue's "
                 "completions | of which with a job waiting | goal | met |",
                 "| ---: | --- | --- | --- | --- | ---: | --- |"]
        for p in self.pauses:
            shown, met = ("-", "-") if math.isnan(p.goal) else (
                f"{p.goal:.1f} s", "yes" if p.stall <= p.goal else "NO")
            lines.append(f"| {p.fault.start - self.t0:.0f} | {p.fault.kind} | {p.fault.target} "
                         f"| {p.gap:.1f} s ({p.gap_queue}) | {p.stall:.1f} s ({p.stall_queue}) "
                         f"| {shown} | {met} |")
        lines.append("From the fault until 10 s after roger was whole again. A gap counts "
                     "every second without a completion, also while the queue had nothing to "
                     "do (the producer holds its last 5 % back until the faults end, and a "
                     "leader_stop's backlog goes to one queue); the second figure only time a "
                     "confirmed job waited, which the goal applies to: 2 x heartbeat + connect "
                     "timeout for a node that dies or stops; for the rolling restart, the "
                     "longest single node restart.")
        return lines
