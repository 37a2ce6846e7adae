"""The ledger run's orchestration (`ChaosRun`): nodes, producer, faults, drain, verdict."""

from __future__ import annotations

import contextlib
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import amqp
import kombu

import roger
from benchmarks.chaos.broker import rabbitmqctl, restore_broker
from benchmarks.chaos.cluster_faults import ClusterInjector, completion_pauses
from benchmarks.chaos.config import EXTERNAL, MEMORY_ALARM, ChaosConfig
from benchmarks.chaos.faults import Fault, Injector
from benchmarks.chaos.ledger import Completion, Ledger
from benchmarks.chaos.nodes import ChaosNode, wait_until
from benchmarks.chaos.report import Report
from benchmarks.cluster import RabbitCluster
from benchmarks.cluster import cluster as private_cluster
from roger.amqp import delay

# Node log lines that show a broker disruption (to spot other programs' faults).
DISRUPTION_MARKS = ("lost the broker connection", "cannot connect to",
                    "broker connection lost or refused")
# How long around a fault's window a finished job's lost ack can come from it.
DUP_SLACK_BEFORE, DUP_SLACK_AFTER = 2.0, 3.0


class ChaosRun:
    """One ledger run: nodes, producer, injector, drain, classification."""

    def __init__(self, cfg: ChaosConfig, log: Callable[[str], None] | None = None,
                 cluster: RabbitCluster | None = None) -> None:
        if cluster is not None:  # every connection, the run's own too, on the private cluster
            cfg = replace(cfg, broker_url=cluster.broker_url, cluster=True)
        self.cfg = cfg
        self.cluster = cluster
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(cfg.workdir or f"/tmp/roger-chaos-{self.run_id}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        sink = self.workdir / "sink"
        sink.mkdir(exist_ok=True)
        self.ledger = Ledger(sink)
        self.partitions = {f"chaos-{self.run_id}-{x}": {"q1": cfg.workers, "q2": cfg.workers}
                           for x in "ab"}
        self.targets = [(p, q) for p, qs in self.partitions.items() for q in qs]
        self.rng = random.Random(cfg.seed)
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.t0 = time.time()
        # Its own delay levels (and exchanges): their leftovers are this run's alone.
        self.prefix = f"chaos-{self.run_id}"
        env = {
            "ROGER_SYSTEM_EXCHANGE_PREFIX": self.prefix,
            "ROGER_BROKER_URL": cfg.broker_url,
            "ROGER_PARTITIONS": json.dumps(self.partitions),
            "ROGER_IMPORTS": json.dumps(["benchmarks.chaos.jobs"]),
            "ROGER_STATE_DIR": str(self.workdir / "state"),
            "ROGER_HEARTBEAT": str(cfg.heartbeat),
            "ROGER_SHUTDOWN_TIMEOUT": str(cfg.shutdown_timeout),
            "ROGER_CONFIRM_TIMEOUT": str(cfg.confirm_timeout),
            "ROGER_RETRY_LEVELS": json.dumps(list(cfg.retry_levels)),
            "ROGER_IDLE_AFTER": str(cfg.idle_after),
            "ROGER_CONNECT_TIMEOUT": str(cfg.connect_timeout),
            # On the cluster every queue is replicated (see Settings.side_queue_type).
            "ROGER_SIDE_QUEUE_TYPE": "quorum" if cluster is not None else "classic",
        }
        self.nodes = [ChaosNode(f"chaos-{self.run_id}-n{i}", self.workdir, env) for i in (1, 2)]
        self.producer_settings = roger.Settings(
            broker_url=cfg.broker_url, confirm_timeout=cfg.confirm_timeout,
            connect_timeout=cfg.connect_timeout,
            retry_levels=list(cfg.retry_levels), state_dir=self.workdir / "state",
            system_exchange_prefix=self.prefix,
            side_queue_type="quorum" if cluster is not None else "classic")
        self.injector = Injector(self) if cluster is None else ClusterInjector(self, cluster)
        self.stop_producing = threading.Event()
        self.faults_over = threading.Event()
        self.given_up = 0

    def say(self, text: str) -> None:
        self._log(f"[chaos {time.time() - self.t0:6.1f} s] {text}")

    # -- phases

    def _start_nodes(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            if not wait_until(lambda n=node: n.healthy(self.partitions), 60.0):
                raise RuntimeError(f"node {node.name} did not start; see {node.log}")
        self.say(f"2 nodes serving {', '.join(self.partitions)} (workdir {self.workdir})")

    def _produce(self) -> None:
        """Publish `jobs` records, paced evenly over the fault window, in small batches.

        The last 5 % wait for the faults to end, so that publishing goes on
        for the whole window even when faults take longer than planned.
        """
        cfg = self.cfg
        rate = cfg.jobs / cfg.duration
        start = time.monotonic()
        sent = 0
        turn = 0
        while sent < cfg.jobs and not self.stop_producing.is_set():
            cap = cfg.jobs if self.faults_over.is_set() else int(cfg.jobs * 0.95)
            due = min(cap, int(rate * (time.monotonic() - start)) + 1) - sent
            if due <= 0:
                time.sleep(min(0.05, 1 / rate))
                continue
            p, q = self._target(turn, time.monotonic() - start)
            turn += 1
            delay = (self.rng.randint(1, cfg.max_delay)
                     if self.rng.random() < cfg.delayed_share else 0)
            batch = [self.ledger.make(p, q, self.rng.uniform(0, cfg.job_sleep), delay=delay)
                     for _ in range(min(due, 25))]
            if not self.ledger.publish(batch, self.producer_settings, self.stop_producing):
                self.given_up += len(batch)
            sent += len(batch)

    def _target(self, turn: int, elapsed: float) -> tuple[str, str]:
        """Round robin; with `idle_after`, every queue also has quiet spells.

        Each queue alternates 3 x idle_after seconds of jobs with as many of
        none, half of the queues at a time: a quiet queue falls idle, and the
        next job wakes it, again and again through the run.
        """
        targets = self.targets
        if self.cfg.idle_after > 0:
            phase = int(elapsed // (3 * self.cfg.idle_after))
            targets = [t for i, t in enumerate(targets) if (phase + i) % 2 == 0] or targets
        return targets[turn % len(targets)]

    def _inject(self) -> None:
        cfg, inj = self.cfg, self.injector
        end = time.monotonic() + cfg.duration
        if cfg.deterministic:
            spacing = cfg.duration / len(cfg.kinds)
            for i, kind in enumerate(cfg.kinds):
                _sleep_until(time.monotonic() + cfg.gap[0])
                # Each fault strikes a healthy system, so it finds its target.
                self._wait_healthy(90.0)
                fault = inj.inject(kind)
                if not fault.injected:  # once more, after a pause
                    time.sleep(2.0)
                    self._wait_healthy(60.0)
                    inj.inject(kind)
                _sleep_until(end - cfg.duration + (i + 1) * spacing)
            return
        pending = list(cfg.kinds)
        self.rng.shuffle(pending)
        while time.monotonic() < end:
            _sleep_until(min(end, time.monotonic() + self.rng.uniform(*cfg.gap)))
            if time.monotonic() >= end:
                break
            kind = pending.pop(0) if pending else self.rng.choice(cfg.kinds)
            fault = inj.inject(kind)
            if not fault.injected:
                pending.append(kind)
        # Each kind at least once, even if the window ran out.
        for kind in pending:
            self._wait_healthy(60.0)
            inj.inject(kind)

    def _wait_healthy(self, timeout: float) -> bool:
        return wait_until(lambda: all(n.healthy(self.partitions) for n in self.nodes), timeout)

    def _queue_depths(self) -> dict[str, int] | None:
        """Messages (ready + unacked) in this run's queues, or None if unknown."""
        try:
            args = ("list_queues", "-q", "--no-table-headers", "name", "messages")
            out = (rabbitmqctl(*args, timeout=60.0) if self.cluster is None
                   else self.cluster.any_node().ctl(*args, timeout=60.0))
        except Exception:
            return None
        depths = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(f"chaos-{self.run_id}-"):
                depths[parts[0]] = int(parts[1])
        return depths

    def _drain(self) -> None:
        """Wait (bounded) until every confirmed job ran and the work queues are empty."""
        deadline = time.monotonic() + self.cfg.drain_timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            self.ledger.read_sink()
            missing = set(self.ledger.confirmed) - self.ledger.done_ids()
            depths = self._queue_depths()
            busy = None if depths is None else sum(
                n for q, n in depths.items() if not q.endswith((".buried", ".rejected")))
            if busy == 0 and not missing:
                return
            if (busy == 0 and time.time() > self.ledger.last_due
                    and all(n.healthy(self.partitions) for n in self.nodes)):
                # Nothing left to run: the missing ones are dead-lettered or lost.
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 5.0:
                    return
            else:
                quiet_since = None
            self.say(f"draining: {len(missing)} confirmed jobs not done yet, "
                     f"{busy if busy is not None else '?'} messages queued")
            time.sleep(2.0)
        self.say("drain deadline passed")

    def _leftovers(self) -> tuple[dict[str, str], set[str]]:
        """Read (and empty) this run's queues: (dead-lettered id -> reason, still queued ids)."""
        dead: dict[str, str] = {}
        queued: set[str] = set()
        dump = self.workdir / "leftovers.jsonl"
        with kombu.Connection(self.cfg.broker_url, connect_timeout=10) as conn, \
                open(dump, "a") as out:
            for p, q in self.targets:
                settings = self.producer_settings
                names = [f"{p}-{q}", *(f"{p}-{q}.retry.{s}" for s in settings.retry_levels),
                         f"{p}-{q}.buried", f"{p}-{q}.rejected"]
                if (p, q) == self.targets[0]:  # the run's delay levels, once
                    names += self._levels()
                for name in names:
                    ch = conn.channel()
                    try:
                        while (msg := ch.basic_get(name, no_ack=True)) is not None:
                            body = msg.body if isinstance(msg.body, bytes) else msg.body.encode()
                            headers = msg.properties.get("application_headers") or {}
                            try:
                                job_id = json.loads(body)["id"]
                            except (ValueError, KeyError, TypeError):
                                job_id = "?"
                            out.write(json.dumps({"queue": name, "id": job_id,
                                                  "headers": headers}, default=str) + "\n")
                            if name.endswith((".buried", ".rejected")):
                                kind = name.rsplit(".", 1)[1]
                                dead[job_id] = f"{kind}: {headers.get('x-roger-reason', '?')}"
                            else:
                                queued.add(job_id)
                    except amqp.exceptions.NotFound:
                        pass  # never declared (retry queues are declared on demand): empty
                    except Exception as e:
                        self.say(f"cannot read {name}: {e}")
                    finally:
                        with contextlib.suppress(Exception):
                            ch.close()
        return dead, queued

    def _classify(self, report: Report, dead: dict[str, str], queued: set[str]) -> None:
        ledger = self.ledger
        ledger.read_sink()
        confirmed = ledger.confirmed
        report.confirmed = len(confirmed)
        report.unconfirmed = self.given_up
        report.producer_errors = ledger.errors
        report.unconfirmed_done = len(ledger.done_ids() - set(confirmed))
        all_runs = [c for runs in ledger.completions.values() for c in runs]
        report.completions = len(all_runs)
        if all_runs:
            report.completion_seconds = max(c.t for c in all_runs) - min(c.t for c in all_runs)
        report.publish_seconds = max(ledger.last_confirm - ledger.first_publish, 1e-9)
        faults = [f for f in self.injector.faults if f.injected]
        report.external = self._external_disruptions(faults)
        faults = sorted(faults + report.external, key=lambda f: f.start)
        dead_counts: Counter[str] = Counter()
        for job_id in confirmed:
            runs = sorted(ledger.completions.get(job_id, []), key=lambda c: c.t)
            if runs and job_id in dead:
                report.copies_aside[dead[job_id]] += 1
            if len(runs) == 1:
                report.done_once += 1
            elif len(runs) > 1:
                report.duplicated += 1
                report.extra_runs += len(runs) - 1
                for prev, again in zip(runs, runs[1:], strict=False):
                    cause = self._cause(job_id, prev, again, faults)
                    report.dup_causes[cause] += 1
                    if again.started < prev.t:
                        report.overlapping[cause] += 1
            elif job_id in dead:
                dead_counts[dead[job_id]] += 1
            elif job_id in queued:
                report.still_queued += 1
            else:
                report.lost += 1
                report.lost_ids.append(f"#{confirmed[job_id]} {job_id}")
        report.dead_lettered = dict(dead_counts)
        report.delayed = len(ledger.delayed)
        early = [c for runs in ledger.completions.values() for c in runs if c.early]
        report.early = len(early)
        report.early_ids = [f"#{c.n} {c.id} started {c.due_at - c.started * 1000:.0f} ms early"
                            for c in early]

    def _save(self, report: Report) -> None:
        """Keep what only this process knew (confirmed ids, faults) beside the sink and logs."""
        data = {
            "t0": self.t0, "partitions": self.partitions,
            "confirmed": self.ledger.confirmed,
            "confirmed_at": self.ledger.confirmed_at,
            "republished": {i: n for i, n in self.ledger.publishes.items() if n > 1},
            "faults": [vars(f) for f in report.faults + report.external],
        }
        (self.workdir / "ledger.json").write_text(json.dumps(data))

    def _cause(self, job_id: str, prev: Completion, again: Completion,
               faults: list[Fault]) -> str:
        """What made the job run again after its run `prev` finished.

        The rerun's own record tells the mechanism: a *redelivery* means an
        ack was lost (the consumer, its connection or the broker went away
        between the job's end and its ack); a higher *attempt* means a retry
        (its worker died after the work); neither, for a job id published
        more than once, means two copies from the producer. The fault whose
        window holds the end of `prev` is the one to blame.
        """
        if not again.redelivered and again.attempt == prev.attempt \
                and self.ledger.publishes[job_id] > 1:
            return "producer_republish"
        candidates = []
        for f in faults:
            after = DUP_SLACK_AFTER + (self.cfg.confirm_timeout if f.kind == MEMORY_ALARM else 0)
            if f.start - DUP_SLACK_BEFORE <= prev.t <= f.end + after:
                candidates.append(f)
        if candidates:
            # The earliest fault that struck after the run finished, else the last before.
            later = [f for f in candidates if f.start >= prev.t]
            return (later[0] if later else candidates[-1]).kind
        return "unexplained"

    def _external_disruptions(self, own: list[Fault]) -> list[Fault]:
        """Broker disruptions in the nodes' logs that none of our faults explains.

        RabbitMQ is shared: other programs' tests close connections and
        restart the broker too. Their disruptions can rerun jobs; naming
        them keeps those reruns from looking unexplained.
        """
        stamps = []
        for node in self.nodes:
            with contextlib.suppress(OSError), open(node.log, errors="replace") as f:
                for line in f:
                    if any(mark in line for mark in DISRUPTION_MARKS):
                        with contextlib.suppress(ValueError):
                            t = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                            stamps.append(t + int(line[20:23]) / 1000)
        # Our own faults, and the recovery right after them (consumers restart).
        ours = [(f.start - 1.0, f.end + 15.0) for f in own]
        events: list[Fault] = []
        for t in sorted(stamps):
            if any(a <= t <= b for a, b in ours):
                continue
            if events and t - events[-1].end < 5.0:
                events[-1].end = t
            else:
                events.append(Fault(EXTERNAL, t, t, "broker", "seen in the nodes' logs",
                                    injected=False))
        return events

    def _cleanup_broker(self) -> None:
        names: list[str] = []
        for p, q in self.targets:
            names += [f"{p}-{q}", *(f"{p}-{q}.retry.{s}" for s in self.cfg.retry_levels),
                      f"{p}-{q}.buried", f"{p}-{q}.rejected"]
        names += [f"{p}.global" for p in self.partitions] + self._levels()
        with contextlib.suppress(Exception), \
                kombu.Connection(self.cfg.broker_url, connect_timeout=10) as conn:
            for name in names:
                ch = conn.channel()
                with contextlib.suppress(Exception):
                    ch.queue_delete(name)
                with contextlib.suppress(Exception):
                    ch.close()
            for p in self.partitions:
                ch = conn.channel()
                with contextlib.suppress(Exception):
                    ch.exchange_delete(f"{self.prefix}.{p}.events")
                with contextlib.suppress(Exception):
                    ch.close()
            for name in [*self._levels(), f"{self.prefix}.delay.deliver",
                         f"{self.prefix}.system"]:
                ch = conn.channel()
                with contextlib.suppress(Exception):
                    ch.exchange_delete(name)
                with contextlib.suppress(Exception):
                    ch.close()

    def _levels(self) -> list[str]:
        """The run's delay level queues (each also names an exchange)."""
        return delay.level_queues(self.producer_settings)

    def run(self) -> Report:
        cfg = self.cfg
        report = Report(cfg, t0=self.t0)
        producer = threading.Thread(target=self._produce, name="chaos producer", daemon=True)
        try:
            self._start_nodes()
            producer.start()
            self._inject()
            self.faults_over.set()
            self.say("faults over; waiting for the producer")
            producer.join(cfg.drain_timeout)
            self.stop_producing.set()
            producer.join(30.0)
            drain_start = time.monotonic()
            self._drain()
            report.drain_seconds = time.monotonic() - drain_start
            report.recovered = self._wait_healthy(60.0)
            for node in self.nodes:
                node.stop(cfg.shutdown_timeout + 10.0)
            dead, queued = self._leftovers()
            report.faults = list(self.injector.faults)
            self._classify(report, dead, queued)
            if isinstance(self.injector, ClusterInjector):
                report.pauses = completion_pauses(
                    report.faults, self.ledger, 2 * cfg.heartbeat + cfg.connect_timeout,
                    self.injector.restarts)
            self._save(report)
            report.notes += [f"orphans after a kill: {f.target}: {f.note}"
                             for f in report.faults if "ORPHANS" in f.note]
        finally:
            self.stop_producing.set()
            self.injector.release()
            problems = (restore_broker() if not isinstance(self.injector, ClusterInjector)
                        else self.injector.restore())
            if problems:
                self.say(f"restoring the broker: {problems}")
            for node in self.nodes:
                node.stop(2.0)
            self._cleanup_broker()
        report.run_seconds = time.time() - self.t0
        return report


def _sleep_until(when: float) -> None:
    left = when - time.monotonic()
    if left > 0:
        time.sleep(left)


def run(cfg: ChaosConfig, log: Callable[[str], None] | None = None,
        cluster: RabbitCluster | None = None) -> Report:
    """Run one ledger run and return its report (the broker is restored either way).

    With ``cfg.cluster``, on `cluster` (left running), or on a private
    3-node cluster booted for the run and torn down after it.
    """
    if cfg.cluster and cluster is None:
        with private_cluster() as booted:
            return ChaosRun(cfg, log, booted).run()
    return ChaosRun(cfg, log, cluster).run()
