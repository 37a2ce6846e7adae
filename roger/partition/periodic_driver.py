"""Drives a coordinator core's periodic entries: ticks while standby, fires while active.

See `roger.partition.periodic` for the rules. The driver belongs to one
`CoordinatorCore` (in a coordinator process or in the node's watcher); the
host's loop asks it how long it may sleep (`timeout`) and gives it a turn
(`on_turn`); the core runs `fire_due` when it becomes active and on every
``tick`` request.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import amqp

from roger import message
from roger.amqp import publish, topology
from roger.errors import BrokerError
from roger.partition.periodic import MAX_MISSED_COUNTED, Due, Schedule, describe, job_id

__all__ = ["PeriodicDriver"]

log = logging.getLogger("roger.periodic")

# The longest sleep between looks at the wall clock: a clock set forward
# (NTP, a suspended VM) is noticed within this many seconds.
MAX_SLEEP = 30.0


class PeriodicDriver:
    """The periodic side of one `CoordinatorCore` (`core`, typed loosely: no import cycle)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.schedule = Schedule(core.partition, core.settings)
        self.wake_at: float | None = None
        self.declared: set[str] = set()
        self.declare_channel: amqp.Channel | None = None

    def __repr__(self) -> str:
        return (f"<PeriodicDriver {self.core.partition!r}: {len(self.schedule.entries)} "
                f"entries, next look at {self.wake_at}>")

    def start(self) -> None:
        """Once subscribed: tick at once (slots missed while no node ran fire now)."""
        if not self.schedule:
            return
        self.send_tick()
        self.wake_at = self.schedule.next_slot(time.time())

    def timeout(self) -> float | None:
        """Seconds until this driver needs a turn, or None."""
        if self.wake_at is None:
            return None
        return max(0.0, min(self.wake_at - time.time(), MAX_SLEEP))

    def on_turn(self) -> None:
        """At a slot: fire it if this core is the active one, else tell whoever is."""
        now = time.time()
        if self.wake_at is None or now < self.wake_at:
            return
        if self.core.active:
            self.catch_up(now)
        else:
            self.send_tick()
        self.wake_at = self.schedule.next_slot(now)

    def catch_up(self, now: float | None = None) -> None:
        """`fire_due` from the host's own turn: a failure is logged, never kills the host."""
        try:
            self.fire_due(time.time() if now is None else now)
        except Exception:  # the persister failed: nothing was published; next slot retries
            log.exception("[%s] periodic jobs: firing failed", self.core.partition)

    def send_tick(self) -> None:
        """Ask the partition's active coordinator (maybe this one) to fire what is due."""
        if self.core.ctag is None:
            return  # not in the line any more: the others tick
        # Not persistent: a tick lost with the broker is made up by the next one.
        self.core.channels.publish.basic_publish(
            amqp.Message(json.dumps({"op": "tick"}), content_type="application/json"),
            exchange="", routing_key=self.core.queue)

    # ------------------------------------------------------------------ firing

    def fire_due(self, now: float) -> None:
        """Fire every due slot: record them all through the persister, then publish."""
        if not self.schedule:
            return
        due, changed = self.schedule.due(self.core.state.periodic, now)
        if not changed:
            return
        ready = [(d, *made) for d in due if (made := self._prepare(d, now)) is not None]
        self.core.save()  # before any publish: a slot fires at most once
        for d, job, body in ready:
            self._publish(d, job, body)

    def _prepare(self, due: Due, now: float) -> tuple[Any, bytes] | None:
        """The record of `due`'s job and its body, its queue_key claimed; None: skip the slot."""
        entry, p = due.entry, self.core.partition
        spec = entry.spec
        try:
            job = entry.job_class.create(spec.args, id=job_id(entry, due.slot))
            job.queue = spec.queue or type(job).queue_type(job, job.args)
            job.queued_at = int(now * 1000)
            body = message.encode(job)
        except Exception as e:  # the job's own hooks: a bug there skips the slot, loudly
            log.error("[%s] periodic %r: slot %s skipped: cannot make the job: %s: %s",
                      p, entry.name, describe(due.slot), type(e).__name__, e)
            return None
        if len(body) > self.core.settings.max_message_bytes:
            log.error("[%s/%s] periodic %r: slot %s skipped: job %s is %d bytes, over "
                      "max_message_bytes", p, job.queue, entry.name, describe(due.slot),
                      job.id, len(body))
            return None
        key = job.queue_key
        if key is not None and self.core.state.claim([(key, job.id)], now):
            log.warning("[%s/%s] periodic %r: slot %s skipped: job %s's queue_key %r is held "
                        "by a job still queued or running", p, job.queue, entry.name,
                        describe(due.slot), job.id, key)
            return None
        return job, body

    def _publish(self, due: Due, job: Any, body: bytes) -> None:
        p, queue = self.core.partition, job.queue
        item = publish.Outgoing(topology.queue_name(p, queue), body, message_id=job.id)
        try:
            self._declare(queue)
            try:
                publish.publish_confirmed(self.core.channels.confirm, [item],
                                          self.core.settings.confirm_timeout)
            except publish.Unroutable:  # the queue was deleted since we declared it
                self.declared.discard(queue)
                self._declare(queue)
                publish.publish_confirmed(self.core.channels.confirm, [item],
                                          self.core.settings.confirm_timeout)
        except BrokerError as e:
            log.error("[%s/%s] periodic %r: slot %s lost: job %s was not confirmed: %s",
                      p, queue, due.entry.name, describe(due.slot), job.id, e)
            if job.queue_key is not None and self.core.state.release(job.queue_key, job.id):
                self.core.save()
            return
        extra = f" (stands for {due.missed}{'+' if due.missed >= MAX_MISSED_COUNTED else ''} "\
                f"missed slots)" if due.missed > 1 else ""
        log.info("[%s/%s] periodic %r: slot %s enqueued as job %s%s", p, queue,
                 due.entry.name, describe(due.slot), job.id, extra)

    def _declare(self, queue: str) -> None:
        if queue in self.declared:
            return
        # Its own channel: a failed declaration closes the channel it was on.
        if self.declare_channel is None or not self.declare_channel.is_open:
            self.declare_channel = self.core.channels.publish.connection.channel()
        try:
            topology.declare_queues(self.declare_channel, self.core.settings,
                                    self.core.partition, queue, retry=False)
        except BrokerError:
            self.declare_channel = None
            raise
        self.declared.add(queue)
