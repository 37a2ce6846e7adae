"""The consumer process: one per queue, owner of its AMQP connection; never runs job code.

It is a `roger.amqp.service.Service`: one thread, one epoll loop over the
AMQP socket, its link to the partition supervisor, the signal wakeup and
its worker pool (sentinels and outcome pipes). So heartbeats, acks and
control calls are served while jobs run, and an idle consumer sleeps.

A job's path through it, in the order of the files:

1. here, `_on_delivery`: the message is decoded and validated (bad input is
   moved aside by `Settlement.reject`);
2. `roger.partition.admission`: cancelled, duplicate, keyed or plain, it
   runs in a worker (`roger.partition.pool`, `roger.partition.worker`) as
   soon as one is free;
3. `roger.partition.settlement`: the outcome is settled and the delivery
   acked.

Idle (`idle_after` seconds without a delivery, nothing running or waiting):
cancel the subscription, and exit with code 0 unless a delivery arrived
meanwhile. The partition supervisor does not restart it; the node's watcher
(`roger.node.watcher`) watches the queue instead and wakes it on the next
message.

Shutdown (SIGTERM from the partition supervisor, or a `Drain` cast): stop
consuming, hand prefetched jobs back, wait up to `shutdown_timeout` for
running jobs, then kill the rest and reject them with requeue: a job is
never lost to a shutdown.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import amqp
from amqp.exceptions import ConsumerCancelled

from roger import message, registry
from roger.amqp import topology
from roger.amqp.service import Service
from roger.callbacks import Callbacks
from roger.errors import BadMessage
from roger.metrics import Tally
from roger.partition.admission import Admission, Delivery
from roger.partition.coordinator_link import CoordinatorLink
from roger.partition.pool import WorkerPool
from roger.partition.settlement import Settlement
from roger.partition.twin_locks import renew_every
from roger.settings import Settings
from supervision import SupervisorAPI, SupervisorGone

__all__ = ["Consumer", "ConsumerStatus", "Drain", "SetWorkers", "run_consumer"]

log = logging.getLogger("roger.consumer")


def run_consumer(partition: str, queue: str, workers: int, settings: Settings) -> None:
    """Consumer process main (the `start` of its ChildSpec)."""
    Consumer(partition, queue, workers, settings).run()


# ------------------------------------------------- requests from the partition


@dataclass(frozen=True)
class SetWorkers:
    """Call: resize the pool (the prefetch follows); answers the consumer's status."""

    workers: int


@dataclass(frozen=True)
class ConsumerStatus:
    """Call: the consumer's status dict (see `Consumer.status`)."""


@dataclass(frozen=True)
class Drain:
    """Cast: stop consuming and wait for running jobs, then exit."""


def set_workers(sup: SupervisorAPI, queue: str, workers: int, timeout: float = 30.0) -> dict:
    return sup.call_child(queue, SetWorkers(workers), timeout)


def status(sup: SupervisorAPI, queue: str, timeout: float = 5.0) -> dict:
    return sup.call_child(queue, ConsumerStatus(), timeout)


def drain(sup: SupervisorAPI, queue: str) -> None:
    sup.cast_child(queue, Drain())


# ------------------------------------------------------------------ the process


class Consumer(Service):
    def __init__(self, partition: str, queue: str, workers: int, settings: Settings) -> None:
        super().__init__(settings, f"{partition}/{queue}")
        self.partition, self.queue, self.workers = partition, queue, workers
        self.qname = topology.queue_name(partition, queue)
        self.ctag: str | None = None  # our subscription, while consuming
        self.draining = False
        self.drain_deadline = 0.0
        self.closing = False
        self.idle = False  # set when it gave its queue back (see `_go_idle`)
        self.going_idle = False
        self.last_active = time.monotonic()
        self.renew_at = 0.0  # when the twin locks held here are next renewed (monotonic)
        # Made by `setup`, once connected.
        self.channel: amqp.Channel
        self.coordinator: CoordinatorLink
        self.settlement: Settlement
        self.admission: Admission
        self.pool: WorkerPool | None = None
        self.tally: Tally | None = None  # with metrics on: counts sent up the tree

    def __repr__(self) -> str:
        state = ("closing" if self.closing else "draining" if self.draining
                 else "consuming" if self.ctag else "not consuming")
        return f"<Consumer {self.label} {state}, {self.workers} workers: {self.admission!r}>"

    # ---------------------------------------------------------------- lifecycle

    def setup(self) -> None:
        registry.import_modules(self.settings.imports)
        callbacks = Callbacks.load(self.settings.callbacks)
        self.channel = self.conn.channel()
        topology.declare_queues(self.channel, self.settings, self.partition, self.queue,
                                retry=False)
        # Settling publishes (retry, buried, rejected) are confirmed on their
        # own channel before the original delivery is acked.
        settle_channel = self.conn.channel()
        self.coordinator = CoordinatorLink(self.conn, self.settings, self.partition,
                                           self.later(self._on_broadcast),
                                           self.later(self._on_key), self.later(self._on_twin))
        self.coordinator.start()
        self.settlement = Settlement(self.channel, settle_channel, self.settings,
                                     self.partition, self.queue, self.coordinator, callbacks)
        self.pool = WorkerPool(self.partition, self.queue, self.settings, self.workers,
                               self._on_outcome, self._on_lost,
                               inherited=lambda: [self.sock, self.wakeup.reader,
                                                  self.wakeup.writer])
        self.admission = Admission(self.label, self.pool, self.coordinator, self.settlement)
        if self.settings.counts_jobs:
            self.tally = self.settlement.tally = Tally(self.partition, self.queue)
        self.pool.open()
        self._subscribe()
        log.info("[%s] consuming %s with %d workers", self.label, self.qname, self.workers)

    def close(self) -> None:
        self.closing = True
        if self.pool is not None:
            # Workers stop before any message goes back: a job requeued while
            # its worker still ran could start on another node at the same
            # moment. Answers already written are settled as the pool reads
            # them; the jobs of killed workers are requeued (we are closing).
            self.pool.close()
            try:
                self.settlement.flush()
            except Exception:  # the connection is gone: those jobs run again
                pass
            self.admission.requeue_running()
            self.admission.requeue_backlog()
        if self.tally is not None:
            self._report(final=True)  # the last counts, and gauges back to zero
        super().close()

    # ------------------------------------------------------------ loop hooks

    def on_turn(self, ready: set[Any]) -> None:
        assert self.pool is not None
        self.pool.handle(ready)
        self.run_inbox()  # settling drains the socket too
        self.admission.check_deadlines()
        if not self.draining:
            self.admission.dispatch_backlog()
        self.settlement.flush()
        self._renew_twins()
        if self._busy():
            self.last_active = time.monotonic()
        elif self._idle_for() >= self.settings.idle_after > 0 and not self.draining:
            self._go_idle()
        if self.tally is not None:
            self._report()

    def timeout(self) -> float:
        now = time.monotonic()
        timeout = self.admission.next_deadline(now)
        tally = self.tally
        # Counts waiting (the common case while busy) spare the gauges' computing.
        if tally is not None and (tally.jobs or tally.pending(self._gauges())):
            timeout = min(timeout, tally.next_report - now)
        if self.draining:
            timeout = min(timeout, self.drain_deadline - now)
        if self.admission.locks or self.admission.lock_waits:
            timeout = min(timeout, self.renew_at - now)
        if self.settings.idle_after > 0:
            timeout = min(timeout, self.settings.idle_after - self._idle_for())
        return timeout

    # ------------------------------------------------------------------ metrics

    def _gauges(self) -> tuple[int, int, int]:
        """Jobs running, live worker processes, deliveries held unacked."""
        assert self.pool is not None
        return (len(self.admission.inflight), len(self.pool.slots),
                len(self.settlement.acks.outstanding))

    def _report(self, final: bool = False) -> None:
        """Send the counts since the last report up the tree, when due (see `roger.metrics`).

        At most every `REPORT_EVERY` seconds, and only when there is news; the
        `final` one, as the consumer exits, also zeroes its gauges.
        """
        tally = self.tally
        assert tally is not None
        now = time.monotonic()
        if now < tally.next_report and not final:
            return  # most turns of a busy consumer end here
        gauges = (0, 0, 0) if final else self._gauges()
        if not tally.pending(gauges):
            return
        report = tally.take(gauges, now)
        if self.parent is not None:
            try:
                self.parent.event(report)
            except SupervisorGone:
                pass  # the partition is going: so are its counts since the last report

    def _renew_twins(self) -> None:
        """Once per heartbeat while twin locks are held or waited for here (see `lock_tokens`)."""
        held = self.admission.lock_tokens()
        now = time.monotonic()
        if held and now >= self.renew_at:
            self.coordinator.renew_twins(held)
            self.renew_at = now + renew_every(self.settings.heartbeat)

    def _busy(self) -> bool:
        admission = self.admission
        return bool(admission.inflight or admission.backlog or admission.twins
                    or admission.lock_waits or self.coordinator.pending)

    def _idle_for(self) -> float:
        return time.monotonic() - self.last_active

    def _go_idle(self) -> None:
        """Give the queue back: cancel, then exit unless a delivery slipped in.

        Deliveries that arrive before RabbitMQ confirms the cancel are ours
        and run as usual; then the consumer stays. After the confirm none
        can come: the next message waits in the queue for the watcher.
        """
        self.going_idle = True
        try:
            self._unsubscribe()
            self.run_inbox()
        finally:
            self.going_idle = False
        if self._busy():
            self.last_active = time.monotonic()
            self._subscribe()
            return
        self.idle = True
        log.info("[%s] idle for %g s: giving the queue back to the node's watcher",
                 self.label, self.settings.idle_after)

    def watch_key(self) -> Any:
        return self.pool.generation if self.pool is not None else None

    def watched(self) -> list[Any]:
        return self.pool.wait_objects() if self.pool is not None else []

    def on_stop(self) -> None:
        self.begin_drain()

    def finished(self) -> bool:
        if self.idle:
            return True
        if not self.draining:
            return False
        if not self.admission.inflight:
            log.info("[%s] drained", self.label)
            return True
        if time.monotonic() >= self.drain_deadline:
            log.warning("[%s] %d jobs still running after shutdown_timeout; killing them, "
                        "their messages go back to the queue", self.label,
                        len(self.admission.inflight))
            return True
        return False

    def on_consumer_cancelled(self) -> None:
        # The queue was deleted (or the broker cancelled us): declare it again
        # and carry on; jobs in flight are still ours to ack.
        log.warning("[%s] the broker cancelled our subscription to %s; declaring it again",
                    self.label, self.qname)
        self.ctag = None
        topology.declare_queues(self.channel, self.settings, self.partition, self.queue,
                                retry=False)
        self._subscribe()

    # --------------------------------------------------------------- deliveries

    def _on_delivery(self, msg: Any) -> None:
        info = msg.delivery_info
        tag, redelivered = info["delivery_tag"], bool(info.get("redelivered"))
        self.settlement.delivered(tag)
        body = msg.body if isinstance(msg.body, bytes) else msg.body.encode()
        props = msg.properties
        if len(body) > self.settings.max_message_bytes:
            self.settlement.reject(tag, body, props, BadMessage(
                "too_large", f"{len(body)} bytes > max_message_bytes"))
            return
        try:
            job = message.decode(body, props.get("content_type"), partition=self.partition,
                                 queue=self.queue, redelivered=redelivered)
        except BadMessage as e:
            self.settlement.reject(tag, body, props, e)
            return
        self.last_active = time.monotonic()
        if self.draining or (self.ctag is None and not self.going_idle):
            self.settlement.requeue(tag)  # in flight when we stopped consuming
            return
        self.admission.receive(Delivery(tag, redelivered, body, job, props))

    def _on_key(self, delivery: Delivery, ok: bool) -> None:
        if not self.closing:
            self.admission.key_answered(delivery, ok, self.draining)

    def _on_twin(self, context: Any, ok: bool) -> None:
        if not self.closing:
            self.admission.lock_answered(context, ok, self.draining)

    def _on_outcome(self, tag: int, error: dict | None) -> None:
        self.admission.finished(tag, error)

    def _on_lost(self, tag: int, exitcode: int | None) -> None:
        self.admission.lost(tag, exitcode, self.closing)

    def _on_broadcast(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "cancel":
            self.admission.cancel_waiting(event["job_id"])
            self.admission.cancel_running(event["job_id"])
        elif kind == "twins":
            ids = list(event.get("ids", []))
            self.admission.twins_registered(ids)
            if self.coordinator.counted(event):  # after the claims: the coordinator waits
                self.coordinator.seen_twins(ids, self.admission.ident)
        elif kind in ("pause", "resume") and event.get("queue") == self.queue:
            if kind == "pause":
                self._unsubscribe()
            else:
                self._subscribe()
            log.info("[%s] %sd", self.label, kind)

    # ------------------------------------------------------------- subscription

    def _subscribe(self) -> None:
        if (self.workers > 0 and self.ctag is None and not self.draining
                and self.queue not in self.coordinator.paused):
            self.channel.basic_qos(0, self.prefetch(), False)
            self.ctag = self.channel.basic_consume(self.qname,
                                                   callback=self.later(self._on_delivery))

    def prefetch(self) -> int:
        """``ceil(max_workers * prefetch_multiplier)``: deliveries beyond the running
        ones wait here, in order, for a free worker (see `roger.partition.admission`)."""
        return math.ceil(self.workers * self.settings.prefetch_multiplier)

    def _unsubscribe(self) -> None:
        if self.ctag is not None:
            try:
                self.channel.basic_cancel(self.ctag)
            except ConsumerCancelled:
                pass  # the broker cancelled it first: same outcome
            self.ctag = None
        self.admission.requeue_backlog()

    def set_workers(self, workers: int) -> None:
        """Resize: the prefetch follows the pool; in-flight jobs are untouched."""
        if workers == self.workers:
            return
        # A consumer's prefetch is fixed when it subscribes, hence cancel and
        # subscribe again; unacked deliveries stay valid on the channel.
        self._unsubscribe()
        self.workers = workers
        assert self.pool is not None
        self.pool.resize(workers)
        self._subscribe()
        log.info("[%s] now %d workers", self.label, workers)

    def begin_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + self.settings.shutdown_timeout
        self._unsubscribe()
        log.info("[%s] stopping: %d jobs running, waiting up to %s s", self.label,
                 len(self.admission.inflight), self.settings.shutdown_timeout)

    # ------------------------------------------------------------------ control

    def handle_call(self, payload: Any) -> Any:
        if isinstance(payload, SetWorkers):
            self.set_workers(int(payload.workers))
            return self.status()
        if isinstance(payload, ConsumerStatus):
            return self.status()
        return super().handle_call(payload)

    def handle_cast(self, payload: Any) -> None:
        if isinstance(payload, Drain):
            self.begin_drain()

    def status(self) -> dict:
        assert self.pool is not None
        running = self.pool.running()
        declared = self.channel.queue_declare(self.qname, passive=True)
        return {
            "queue": self.queue,
            "max_workers": self.workers,
            "consuming": self.ctag is not None,
            "paused": self.queue in self.coordinator.paused,
            "message_count": declared.message_count,
            "consumer_count": declared.consumer_count,
            "pid": os.getpid(),
            "workers": self.pool.pids(),
            "settled": self.settlement.settled,
            "running": [
                {"id": e.job.id, "name": e.job.name, "started_at": e.job.started_at,
                 "worker_pid": running[t].pid if t in running else None,
                 "record": message.encode(e.job).decode()}
                for t, e in self.admission.inflight.items()
            ],
            # Delivered but not started: still queued, from the user's point of view.
            "waiting": [message.encode(job).decode() for job in self.admission.waiting()],
        }
