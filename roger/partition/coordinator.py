"""The coordinator process: a partition's global state, one active per cluster.

Every node runs a coordinator process per partition; all of them consume
the partition's ``<partition>.global`` queue, which has RabbitMQ's
single-active-consumer flag: exactly one of them gets the requests, in
order, and when its node dies RabbitMQ hands the queue to a standby. Being
the only reader makes every operation atomic without locks.

The state (queue keys, execution keys, cancelled job ids, paused queues,
the counts of delayed jobs by due time) is
saved through the persister after each change, and loaded when a
coordinator receives its first request after (re)subscribing, that is when
it becomes the active one. What a failover can lose: nothing that was
acknowledged to a caller, since the coordinator saves before it replies or
acks; an unanswered request times out at the caller, who may retry.

A queue key is held from its claim until its job's release (it finished,
was buried, rejected or purged), or its cancel. So that no key can stay
taken forever (a release lost with a whole cluster, a job that never comes
back), a key whose job has not settled within `queue_key_ttl` is freed:
the claim of that very key frees it at once, and every save sweeps the
rest.

Requests are JSON messages with an ``op``; calls carry ``reply_to`` and
``correlation_id`` (RabbitMQ's direct reply-to); one-way notices
(releases, and producers' counts of the jobs they delayed) are persistent
and acked only once applied. Changes that
consumers must act on at once (cancel, pause, resume) are broadcast on the
partition's fanout exchange ``<prefix>.<partition>.events``.

Consumers talk to it through `roger.partition.coordinator_link`, every
other process through `roger.partition.coordination`; the state itself is
`roger.partition.state`.

The active coordinator also enqueues the partition's periodic jobs, each
slot once (`roger.partition.periodic`, driven by
`roger.partition.periodic_driver`): its host's loop gives the core a turn
at each slot (`wake_in`, `on_turn`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import amqp

from roger.amqp import publish, topology
from roger.amqp.service import Service
from roger.partition.periodic_driver import PeriodicDriver
from roger.partition.persister import load_persister
from roger.partition.state import State
from roger.partition.twin_ops import TwinOps
from roger.settings import Settings
from supervision import SupervisorAPI

__all__ = ["CHILD_ID", "Coordinator", "CoordinatorStatus", "run_coordinator", "status"]

log = logging.getLogger("roger.global")

CHILD_ID = "roger.global"  # its id under the partition supervisor: no queue name has a dot


def run_coordinator(partition: str, settings: Settings) -> None:
    """The partition's coordinator process (child ``roger.global`` of its supervisor)."""
    Coordinator(partition, settings).run()


@dataclass(frozen=True)
class CoordinatorStatus:
    """Request: is this coordinator the active one, and what does it hold."""


def status(sup: SupervisorAPI, timeout: float) -> dict:
    """Ask the coordinator under partition supervisor `sup` for `CoordinatorStatus`."""
    return sup.call_child(CHILD_ID, CoordinatorStatus(), timeout)


@dataclass
class Channels:
    """The channels a coordinator works on; the watcher's cores share one set."""

    requests: amqp.Channel  # consumes ``<partition>.global``, prefetch 1 per consumer
    publish: amqp.Channel  # replies, broadcasts, basic_get of waiting queues
    confirm: amqp.Channel  # publish_confirmed owns its channel

    @classmethod
    def open(cls, conn: Any) -> Channels:
        channels = cls(conn.channel(), conn.channel(), conn.channel())
        channels.requests.basic_qos(0, 1, False)
        return channels


class Coordinator(Service):
    """The coordinator process: one `CoordinatorCore` on its own connection."""

    def __init__(self, partition: str, settings: Settings) -> None:
        super().__init__(settings, partition)
        self.partition = partition
        self.core: CoordinatorCore | None = None

    def __repr__(self) -> str:
        return f"<Coordinator process {self.core!r}>"

    def setup(self) -> None:
        self.core = CoordinatorCore(self.partition, self.settings, Channels.open(self.conn),
                                    self.later)
        self.core.subscribe()

    def handle_call(self, payload: Any) -> Any:
        if isinstance(payload, CoordinatorStatus) and self.core is not None:
            return self.core.status()
        return super().handle_call(payload)

    def timeout(self) -> float:
        wake = self.core.wake_in() if self.core is not None else None
        return super().timeout() if wake is None else min(super().timeout(), wake)

    def on_turn(self, ready: set[Any]) -> None:
        if self.core is not None:
            self.core.on_turn()


class CoordinatorCore(TwinOps):
    """Serves ``<partition>.global``: requests in order, one at a time, no locks.

    `defer` wraps the AMQP callback so that requests run from the owner's
    loop, one after the other (`Service.later`). The coordinator process
    holds one core; the node's watcher holds one per idle partition.
    """

    def __init__(self, partition: str, settings: Settings, channels: Channels,
                 defer: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
        self.partition, self.settings = partition, settings
        self.channels = channels
        self.defer = defer
        self.persister = load_persister(settings)
        self.state = State()
        self.active = False
        self.ctag: str | None = None
        self.queue = topology.global_queue_name(partition)
        self.exchange = topology.events_exchange_name(settings, partition)
        self.periodic = PeriodicDriver(self)
        self.reply_address: tuple[str, str] | None = None

    def __repr__(self) -> str:
        role = "active" if self.active else "standby" if self.ctag else "unsubscribed"
        return (f"<CoordinatorCore {self.partition!r} {role}: {len(self.state.queue_keys)} "
                f"queue keys, {len(self.state.exec_holders)} execution keys held, "
                f"{len(self.state.cancelled)} cancelled, paused {sorted(self.state.paused)}>")

    def subscribe(self) -> None:
        """Declare the queue and join its consumers (active or standby: RabbitMQ decides)."""
        topology.declare_global(self.channels.requests, self.settings, self.partition)
        # We learn we are active when a request arrives, and load the state
        # then (see the module doc).
        self.ctag = self.channels.requests.basic_consume(
            self.queue, callback=self.defer(self.on_request))
        self.periodic.start()

    def unsubscribe(self) -> None:
        """Leave: the next consumer in line becomes active and loads the saved state."""
        ctag, self.ctag = self.ctag, None
        self.active = False
        if ctag is not None:
            self.channels.requests.basic_cancel(ctag)

    def status(self) -> dict:
        # Delayed jobs per queue: only the active one knows (standbys hold no state).
        delayed = self.state.delayed_counts(time.time()) if self.active else {}
        return {"active": self.active, "queue_keys": len(self.state.queue_keys),
                "twin_locks": len(self.state.twins.locks) if self.active else 0,
                "paused": sorted(self.state.paused), "delayed": delayed}

    def wake_in(self) -> float | None:
        """Seconds until this core needs a turn (a periodic slot, a twin lock's end), or None."""
        waits = [w for w in (self.periodic.timeout(), self.twins_wake_in()) if w is not None]
        return min(waits, default=None)

    def on_turn(self) -> None:
        """The host's loop turn: fire, or tick, when a periodic slot has come."""
        self.periodic.on_turn()
        self.twins_turn()

    # ------------------------------------------------------------------ requests

    def on_request(self, msg: amqp.Message) -> None:
        """One request from ``<partition>.global`` (run from the loop, never nested)."""
        if self.ctag is None:
            # Delivered before our cancel took effect: the next active
            # coordinator answers it, from the state we saved.
            self.channels.requests.basic_reject(msg.delivery_tag, requeue=True)
            return
        if not self.active:
            self.state = State.from_dict(self.persister.load(self.partition), time.time())
            self.active = True
            self.twins_loaded(time.time())
            log.info("[%s] coordinator active on this node (%d queue keys, %d paused)",
                     self.partition, len(self.state.queue_keys), len(self.state.paused))
            self.periodic.catch_up()  # what came due while none was active
        reply_to = msg.properties.get("reply_to")
        self.reply_address = (reply_to, msg.properties.get("correlation_id")) if reply_to else None
        try:
            request = json.loads(msg.body)
            op = request["op"]
            handler = getattr(self, f"op_{op}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("[%s] bad coordinator request: %r (%s)", self.partition, msg.body[:200], e)
            reply: dict | None = {"ok": False, "error": f"bad request: {e}"}
        else:
            try:
                reply = handler(request)
            except Exception as e:  # a bug must not kill the partition's coordination
                log.exception("[%s] coordinator request %s failed", self.partition, op)
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if reply_to and reply is not None:  # None: answered later (a twin lock's waiter)
            self.channels.publish.basic_publish(
                amqp.Message(json.dumps(reply), content_type="application/json",
                             correlation_id=msg.properties.get("correlation_id")),
                exchange="", routing_key=reply_to)
        self.channels.requests.basic_ack(msg.delivery_tag)

    def save(self) -> None:
        """Persist the state (after expiring what is due): before any reply or publish."""
        self._save()

    def _save(self) -> None:
        now = time.time()
        self.state.expire(now)
        self._expire_keys(now)
        self.persister.save(self.partition, self.state.to_dict())

    def _expire_keys(self, now: float, keys: list[str] | None = None) -> bool:
        """Free the keys (all, or `keys`) held longer than `queue_key_ttl`; True if any."""
        ttl = self.settings.queue_key_ttl
        expired = self.state.expire_keys(now - ttl, keys)
        for key, job_id in expired:
            log.warning("[%s] queue key %r of job %s released: the job did not settle within "
                        "queue_key_ttl (%g s)", self.partition, key, job_id, ttl)
        return bool(expired)

    def _broadcast(self, event: dict) -> None:
        self.channels.publish.basic_publish(
            amqp.Message(json.dumps(event), content_type="application/json"),
            exchange=self.exchange, routing_key="")

    def op_tick(self, request: dict) -> dict:
        """A slot came on some node: fire what is due (see `roger.partition.periodic`)."""
        self.periodic.fire_due(time.time())
        return {"ok": True}

    def op_periodic(self, request: dict) -> dict:
        """The partition's periodic entries with their last and next run (epoch seconds)."""
        return {"ok": True, "entries": self.periodic.schedule.listing(self.state.periodic,
                                                                      time.time())}

    def op_state(self, request: dict) -> dict:
        return {"ok": True, "paused": sorted(self.state.paused),
                "cancelled": list(self.state.cancelled),
                "cancelled_until": self.state.cancelled, "twins": self.state.twins.known,
                "twin_seq": self.state.twins.seq}

    def op_delayed_counts(self, request: dict) -> dict:
        """The partition's delayed jobs not yet due, per queue (for the metrics' gauges)."""
        return {"ok": True, "delayed": self.state.delayed_counts(time.time())}

    def op_delayed(self, request: dict) -> dict:
        # A producer delayed jobs: {"due": ms since the epoch, "counts": {queue: n}}.
        self.state.add_delayed(request["counts"], request["due"] / 1000, time.time())
        self._save()
        return {"ok": True}

    def op_claim(self, request: dict) -> dict:
        pairs = [(k, j) for k, j in request["keys"]]
        now = time.time()
        expired = self._expire_keys(now, [k for k, _ in pairs])
        taken = self.state.claim(pairs, now, request.get("until"))
        if taken:
            if expired:
                self._save()
            return {"ok": False, "duplicates": taken}
        self._save()
        return {"ok": True}

    def op_release(self, request: dict) -> dict:
        # One key (a consumer settling a job), or a batch ("keys": purge, or a
        # producer whose publish failed).
        pairs = request.get("keys") or [(request["key"], request["job_id"])]
        released = [key for key, job_id in pairs if self.state.release(key, job_id)]
        if released:
            self._save()
        return {"ok": True}

    def op_acquire(self, request: dict) -> dict:
        key, job_id = request["key"], request["job_id"]
        if not self.state.acquire(key, job_id):
            return {"ok": False}
        self._save()
        return {"ok": True}

    def op_parked(self, request: dict) -> dict:
        key = request["key"]
        self.state.exec_waiting[key] = self.state.exec_waiting.get(key, 0) + 1
        if key not in self.state.exec_holders:
            self._unpark(key)  # it was released while this job was being parked
        self._save()
        return {"ok": True}

    def op_release_exec(self, request: dict) -> dict:
        key = request["key"]
        if self.state.release_exec(key, request["job_id"]) and self.state.exec_waiting.get(key):
            self._unpark(key)
        self._save()
        return {"ok": True}

    def _unpark(self, key: str) -> None:
        """Send the oldest parked job of `key` back to its queue, holding the key for it."""
        waiting = topology.declare_waiting(self.channels.publish, self.settings,
                                           self.partition, key)
        msg = self.channels.publish.basic_get(waiting, no_ack=False)
        if msg is None:
            self.state.exec_waiting.pop(key, None)
            return
        headers = dict(msg.properties.get("application_headers") or {})
        queue = headers.pop(topology.WAITING_HEADER)
        job_id = json.loads(msg.body)["id"]
        self.state.exec_holders[key] = job_id
        publish.publish_confirmed(self.channels.confirm, [publish.Outgoing(
            topology.queue_name(self.partition, queue), msg.body, headers or None, job_id)],
            self.settings.confirm_timeout)
        self.channels.publish.basic_ack(msg.delivery_tag)
        left = self.state.exec_waiting.get(key, 1) - 1
        if left > 0:
            self.state.exec_waiting[key] = left
        else:
            self.state.exec_waiting.pop(key, None)
        log.info("[%s] execution key %s handed to job %s", self.partition, key, job_id)

    def op_cancel(self, request: dict) -> dict:
        job_id = request["job_id"]
        until = self.state.cancel(job_id, time.time())
        # Freed now, not when a consumer dequeues the job: its queue may be
        # paused (or idle) for long. The job's own release, later, is a no-op.
        for key in self.state.release_job(job_id):
            log.info("[%s] queue key %r of cancelled job %s released", self.partition, key, job_id)
        self._save()
        self._broadcast({"type": "cancel", "job_id": job_id, "until": until})
        log.info("[%s] job %s cancelled", self.partition, job_id)
        return {"ok": True}

    def op_pause(self, request: dict) -> dict:
        self.state.paused.add(request["queue"])
        self._save()
        self._broadcast({"type": "pause", "queue": request["queue"]})
        return {"ok": True}

    def op_resume(self, request: dict) -> dict:
        self.state.paused.discard(request["queue"])
        self._save()
        self._broadcast({"type": "resume", "queue": request["queue"]})
        return {"ok": True}
