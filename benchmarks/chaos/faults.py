"""The fault injector: what each fault kind does to the nodes or the broker."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import roger
from benchmarks.chaos.broker import WATERMARK_NORMAL, rabbitmqctl
from benchmarks.chaos.config import ChaosConfig
from benchmarks.chaos.ledger import Ledger
from benchmarks.chaos.nodes import ChaosNode, wait_gone, wait_until
from benchmarks.procs import _kill, tree
from roger.control import Client


class Run(Protocol):
    """What the injector uses of its run (a `benchmarks.chaos.runner.ChaosRun`).

    Spelled out here rather than imported: the run imports the injector.
    """

    cfg: ChaosConfig
    nodes: list[ChaosNode]
    partitions: dict[str, dict[str, int]]
    targets: list[tuple[str, str]]
    ledger: Ledger
    producer_settings: roger.Settings

    def say(self, text: str) -> None: ...


@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0
    target: str = ""
    note: str = ""
    injected: bool = True


@dataclass
class Target:
    """A consumer as its node's status shows it, and maybe one of its running jobs."""

    node: ChaosNode
    partition: str
    partition_pid: int
    queue: str
    info: dict
    job: dict | None = None

    def __str__(self) -> str:
        return f"{self.node.name} {self.partition}/{self.queue}"

    def describe_job(self) -> str:
        if self.job is None:
            return "-"
        n = self.job.get("n")
        return f"victim job #{n}" if n is not None else f"job {self.job['id'][:8]}"


class Skip(Exception):
    """No target for this fault right now (it is tried again later)."""


class Injector:
    """The faults, each a method; every one leaves the broker as it found it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.cfg = run.cfg
        self.rng = random.Random(self.cfg.seed)
        self.stopped: set[int] = set()  # SIGSTOPped pids, for the final SIGCONT
        self.faults: list[Fault] = []
        self.struck: float | None = None  # when the current fault struck

    def broker_all(self, *args: str) -> None:
        """Run ``rabbitmqctl args`` on every broker node (here: the one default node)."""
        rabbitmqctl(*args)

    def _strike(self) -> None:
        """Mark the moment a fault strikes (after finding its target, which takes a while)."""
        self.struck = time.time()

    def inject(self, kind: str) -> Fault:
        fault = Fault(kind, time.time())
        self.struck = None
        try:
            fault.target, fault.note = getattr(self, f"_{kind}")()
        except Skip as e:
            fault.injected, fault.note = False, f"skipped: {e}"
        except Exception as e:  # a fault that failed half-way still counts as tried
            fault.note = f"error: {type(e).__name__}: {e}"
            fault.injected = False
        fault.end = time.time()
        if self.struck is not None:
            fault.start = self.struck
        self.faults.append(fault)
        self.run.say(f"fault {kind}: {fault.target} {fault.note}".rstrip())
        return fault

    # -- targets

    def _statuses(self) -> list[tuple[ChaosNode, dict]]:
        found = []
        for node in self.run.nodes:
            if node.alive():
                with contextlib.suppress(Exception):
                    found.append((node, node.status(timeout=15.0)))
        return found

    def _consumers(self) -> list[Target]:
        out = []
        for node, status in self._statuses():
            for p, part in status.get("running", {}).items():
                for q, info in part.get("queues", {}).items():
                    if isinstance(info, dict) and info.get("pid") and info.get("consuming"):
                        out.append(Target(node, p, part.get("pid"), q, info))
        return out

    def _target(self, need_job: bool = False) -> Target:
        """Where the next fault strikes.

        The short form aims at a *victim*: a ledger job that waits on its
        first run, so that every fault surely hits a job in flight. The
        random form picks a consumer at random, one running jobs if any
        (with `need_job`, a running job's worker; else a victim after all).
        """
        if not self.cfg.deterministic:
            consumers = self._consumers()
            running = [Target(t.node, t.partition, t.partition_pid, t.queue, t.info, r)
                       for t in consumers for r in t.info.get("running", [])
                       if r.get("worker_pid")]
            if running:
                return self.rng.choice(running)
            if consumers and not need_job:
                return self.rng.choice(consumers)
        return self._victim()

    def _victim(self) -> Target:
        p, q = self.rng.choice(self.run.targets)
        victim = self.run.ledger.make(p, q, 0.0, hold=self.cfg.hold)
        if not self.run.ledger.publish([victim], self.run.producer_settings, give_up=30.0):
            raise Skip("could not publish a victim job")
        deadline = time.monotonic() + self.cfg.hold - 5.0
        while time.monotonic() < deadline:
            for t in self._consumers():
                for r in t.info.get("running", []):
                    if r.get("id") == victim.id and r.get("worker_pid"):
                        return Target(t.node, t.partition, t.partition_pid, t.queue, t.info,
                                      r | {"n": victim.args["n"]})
            time.sleep(0.1)
        raise Skip("the victim job was not seen running")

    # -- the faults: each returns (target, note)

    def _kill_worker(self) -> tuple[str, str]:
        t = self._target(need_job=True)
        assert t.job is not None
        self._strike()
        os.kill(t.job["worker_pid"], signal.SIGKILL)
        return f"{t} worker {t.job['worker_pid']}", f"running {t.describe_job()}"

    def _kill_consumer(self) -> tuple[str, str]:
        t = self._target()
        pid = t.info["pid"]
        procs = tree(pid)  # its workers must die with it
        self._strike()
        os.kill(pid, signal.SIGKILL)
        orphans = wait_gone(procs, 5.0)
        _kill(procs, signal.SIGKILL)
        note = f"{len(t.info['running'])} running"
        return f"{t} consumer {pid}", note + (f"; ORPHANS left: {orphans}" if orphans else "")

    def _stop_consumer(self) -> tuple[str, str]:
        t = self._target()
        pid = t.info["pid"]
        stop_for = self.cfg.stop_for or 3 * self.cfg.heartbeat + 1.0
        self.stopped.add(pid)
        self._strike()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(stop_for)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.stopped.discard(pid)
        return (f"{t} consumer {pid}",
                f"stopped {stop_for:g} s, {len(t.info['running'])} running")

    def _kill_partition(self) -> tuple[str, str]:
        t = self._target()
        pid = t.partition_pid
        procs = tree(pid)
        self._strike()
        os.kill(pid, signal.SIGKILL)
        orphans = wait_gone(procs, 5.0)
        note = f"ORPHANS left: {orphans}" if orphans else f"{len(procs)} processes gone"
        _kill(procs, signal.SIGKILL)
        return f"{t.node.name} {t.partition} supervisor {pid}", note

    def _restart_partition(self) -> tuple[str, str]:
        t = self._target()
        started = time.monotonic()
        self._strike()
        with Client(t.node.socket, timeout=120.0) as ctl:
            reply = ctl.request("restart_partition", partition=t.partition)
        state = "running" if t.partition in reply.get("running", {}) else "waiting"
        return (f"{t.node.name} {t.partition}",
                f"{len(t.info['running'])} running; back {state} after "
                f"{time.monotonic() - started:.1f} s")

    def _kill_node(self) -> tuple[str, str]:
        node = self._target().node
        root = node.pid
        self._strike()
        procs, orphans = node.sigkill()
        time.sleep(1.0)  # dead for a moment: the other node takes its share
        node.start()
        ready = wait_until(lambda: node.healthy(self.run.partitions), 90.0)
        note = f"{len(procs)} processes gone, restarted as {node.pid}"
        if orphans:
            note += f"; ORPHANS left: {orphans}"
        if not ready:
            note += "; NOT healthy within 90 s"
        return f"{node.name} root {root}", note

    def _close_connections(self) -> tuple[str, str]:
        self._strike()
        self.broker_all("close_all_connections", "roger chaos: ledger run")
        return "broker", "every connection closed"

    def _broker_restart(self) -> tuple[str, str]:
        try:
            self._strike()
            rabbitmqctl("stop_app")
            time.sleep(2.0)
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        return "broker", "stop_app, 2 s down, start_app"

    def _memory_alarm(self) -> tuple[str, str]:
        # A probe publish of our own, so that a producer surely publishes
        # under the alarm; it is a ledger job like the others.
        p, q = self.rng.choice(self.run.targets)
        probe = self.run.ledger.make(p, q, 0.0)
        outcome: dict[str, Any] = {}

        def publish_probe() -> None:
            t0 = time.monotonic()
            ok = self.run.ledger.publish([probe], self.run.producer_settings, give_up=120.0)
            outcome["ok"], outcome["blocked"] = ok, time.monotonic() - t0

        self._strike()
        self.broker_all("set_vm_memory_high_watermark", "0")
        prober = threading.Thread(target=publish_probe, name="chaos probe", daemon=True)
        try:
            prober.start()
            time.sleep(self.cfg.alarm_for)
        finally:
            self.broker_all("set_vm_memory_high_watermark", WATERMARK_NORMAL)
        prober.join(60.0)
        return ("broker", f"alarm {self.cfg.alarm_for:g} s; probe job #{probe.args['n']} "
                f"confirmed after {outcome.get('blocked', float('nan')):.1f} s")

    def release(self) -> None:
        """SIGCONT anything still stopped (after an error half-way)."""
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()
