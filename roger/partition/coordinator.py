"""A partition's global state and its coordinator (one active per cluster).

Every node runs a coordinator process per partition; all of them consume
the partition's ``<partition>.global`` queue, which has RabbitMQ's
single-active-consumer flag: exactly one of them gets the requests, in
order, and when its node dies RabbitMQ hands the queue to a standby. Being
the only reader makes every operation atomic without locks.

The state (queue keys, execution keys, cancelled job ids, paused queues) is
saved through the persister after each change, and loaded when a
coordinator receives its first request after (re)subscribing, that is when
it becomes the active one. What a failover can lose: nothing that was
acknowledged to a caller, since the coordinator saves before it replies or
acks; an unanswered request times out at the caller, who may retry.

Requests are JSON messages with an ``op``; calls carry ``reply_to`` and
``correlation_id`` (RabbitMQ's direct reply-to); one-way notices
(releases) are persistent and acked only once applied. Changes that
consumers must act on at once (cancel, pause, resume) are broadcast on the
partition's fanout exchange ``<prefix>.<partition>.events``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import amqp
from multiprocess.connection import wait

import supervision
from roger.amqp import broker, frames
from roger.partition.persister import load_persister

log = logging.getLogger("roger.global")


CANCELLED_TTL = 24 * 3600.0  # seconds a cancelled id is remembered
WAITING_HEADER = "x-roger-queue"  # on a parked job: the queue it returns to


def global_queue_name(partition: str) -> str:
    return f"{partition}.global"


def events_exchange_name(settings: Any, partition: str) -> str:
    return f"{settings.system_exchange_prefix}.{partition}.events"


def waiting_queue_name(partition: str, key: str) -> str:
    return f"{partition}-execution-waiting-{key}"


def declare_global(channel: amqp.Channel, settings: Any, partition: str) -> None:
    """The coordinator queue and the events exchange (idempotent, same arguments everywhere)."""
    channel.queue_declare(global_queue_name(partition), durable=True, auto_delete=False,
                          arguments={"x-single-active-consumer": True})
    channel.exchange_declare(events_exchange_name(settings, partition), "fanout",
                             durable=True, auto_delete=False)


def declare_waiting(channel: amqp.Channel, partition: str, key: str) -> str:
    name = waiting_queue_name(partition, key)
    channel.queue_declare(name, durable=True, auto_delete=False)
    return name


@dataclass
class State:
    """What a partition's coordinator knows. Plain data: it is what gets persisted."""

    queue_keys: dict[str, str] = field(default_factory=dict)  # key -> job id
    exec_holders: dict[str, str] = field(default_factory=dict)  # key -> job id running/granted
    exec_waiting: dict[str, int] = field(default_factory=dict)  # key -> parked jobs
    cancelled: dict[str, float] = field(default_factory=dict)  # job id -> forget after
    paused: set[str] = field(default_factory=set)

    def to_dict(self) -> dict:
        return {"queue_keys": self.queue_keys, "exec_holders": self.exec_holders,
                "exec_waiting": self.exec_waiting, "cancelled": self.cancelled,
                "paused": sorted(self.paused)}

    @classmethod
    def from_dict(cls, data: dict | None) -> State:
        data = data or {}
        return cls(dict(data.get("queue_keys", {})), dict(data.get("exec_holders", {})),
                   dict(data.get("exec_waiting", {})), dict(data.get("cancelled", {})),
                   set(data.get("paused", [])))

    # ---- queue keys

    def claim(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Claim every key for its job, or none: returns the keys held by other jobs."""
        taken = [k for k, job_id in pairs if self.queue_keys.get(k, job_id) != job_id]
        seen: dict[str, str] = {}
        for k, job_id in pairs:  # two jobs of one batch with the same key
            if seen.setdefault(k, job_id) != job_id and k not in taken:
                taken.append(k)
        if not taken:
            self.queue_keys.update(pairs)
        return taken

    def release(self, key: str, job_id: str) -> bool:
        if self.queue_keys.get(key) == job_id:
            del self.queue_keys[key]
            return True
        return False

    # ---- execution keys

    def acquire(self, key: str, job_id: str) -> bool:
        holder = self.exec_holders.get(key)
        if holder is None or holder == job_id:
            self.exec_holders[key] = job_id
            return True
        return False

    def release_exec(self, key: str, job_id: str) -> bool:
        """True when the key became free (the caller then hands it to a parked job)."""
        if self.exec_holders.get(key) != job_id:
            return False
        del self.exec_holders[key]
        return True

    # ---- cancellation and pauses

    def cancel(self, job_id: str, now: float) -> None:
        self.cancelled[job_id] = now + CANCELLED_TTL

    def expire(self, now: float) -> bool:
        old = [j for j, until in self.cancelled.items() if until <= now]
        for j in old:
            del self.cancelled[j]
        return bool(old)


def run_coordinator(partition: str, settings: Any) -> None:
    """The partition's coordinator process (child ``roger.global`` of its supervisor)."""
    Coordinator(partition, settings).run()


class Coordinator:
    def __init__(self, partition: str, settings: Any) -> None:
        self.partition, self.settings = partition, settings
        self.persister = load_persister(settings)
        self.state = State()
        self.active = False
        self.queue = global_queue_name(partition)
        self.exchange = events_exchange_name(settings, partition)

    def run(self) -> None:
        try:
            self._run()
        except frames.CONNECTION_ERRORS as e:
            # Unanswered requests stay in the queue for the next coordinator.
            log.error("[%s] coordinator lost the broker connection: %s", self.partition, e)
            raise SystemExit(4) from None

    def _run(self) -> None:
        s = self.settings
        try:
            self.conn = frames.connect(s)
        except ConnectionError as e:
            log.error("[%s] coordinator: %s", self.partition, e)
            raise SystemExit(3) from None
        self.amqp = self.conn.connection
        self.channel = self.conn.channel()
        declare_global(self.channel, s, self.partition)
        self.publish_channel = self.conn.channel()
        self.confirm_channel = self.conn.channel()  # publish_confirmed owns its channel
        self.channel.basic_qos(0, 1, False)
        # Active or standby is RabbitMQ's choice; we learn we are active when
        # a request arrives, and load the state then (see the module doc).
        self.channel.basic_consume(self.queue, callback=self._on_request)
        supervision.ready()
        parent = supervision.parent() if supervision.is_supervised() else None
        last_beat = time.monotonic()
        while True:
            objs = [self.amqp.sock] + ([parent.conn] if parent and not parent.closed else [])
            ready = wait(objs, s.heartbeat / 4 if s.heartbeat else 5.0)
            if self.amqp.sock in ready:
                frames.drain_pending(self.amqp)
            if parent is not None and parent.conn in ready and not self._serve(parent):
                return
            if time.monotonic() - last_beat >= (s.heartbeat or 20) / 4:
                self.conn.heartbeat_check()
                last_beat = time.monotonic()

    def _serve(self, parent: supervision.Link) -> bool:
        while not parent.closed and parent.pending():
            try:
                msg = parent.recv(0)
            except supervision.SupervisorGone:
                return False
            if msg and msg[0] == "call":
                parent.answer(msg, lambda p: {"active": self.active,
                                              "queue_keys": len(self.state.queue_keys),
                                              "paused": sorted(self.state.paused)})
        return True

    # ------------------------------------------------------------------ requests

    def _on_request(self, msg: amqp.Message) -> None:
        if not self.active:
            self.state = State.from_dict(self.persister.load(self.partition))
            self.active = True
            log.info("[%s] coordinator active on this node (%d queue keys, %d paused)",
                     self.partition, len(self.state.queue_keys), len(self.state.paused))
        try:
            request = json.loads(msg.body)
            op = request["op"]
            handler = getattr(self, f"op_{op}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("[%s] bad coordinator request: %r (%s)", self.partition, msg.body[:200], e)
            reply: dict = {"ok": False, "error": f"bad request: {e}"}
        else:
            try:
                reply = handler(request)
            except Exception as e:  # a bug must not kill the partition's coordination
                log.exception("[%s] coordinator request %s failed", self.partition, op)
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply_to = msg.properties.get("reply_to")
        if reply_to:
            self.publish_channel.basic_publish(
                amqp.Message(json.dumps(reply), content_type="application/json",
                             correlation_id=msg.properties.get("correlation_id")),
                exchange="", routing_key=reply_to)
        self.channel.basic_ack(msg.delivery_tag)

    def _save(self) -> None:
        self.state.expire(time.time())
        self.persister.save(self.partition, self.state.to_dict())

    def _broadcast(self, event: dict) -> None:
        self.publish_channel.basic_publish(
            amqp.Message(json.dumps(event), content_type="application/json"),
            exchange=self.exchange, routing_key="")

    def op_state(self, request: dict) -> dict:
        return {"ok": True, "paused": sorted(self.state.paused),
                "cancelled": list(self.state.cancelled)}

    def op_claim(self, request: dict) -> dict:
        taken = self.state.claim([(k, j) for k, j in request["keys"]])
        if taken:
            return {"ok": False, "duplicates": taken}
        self._save()
        return {"ok": True}

    def op_release(self, request: dict) -> dict:
        if self.state.release(request["key"], request["job_id"]):
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
        waiting = declare_waiting(self.publish_channel, self.partition, key)
        msg = self.publish_channel.basic_get(waiting, no_ack=False)
        if msg is None:
            self.state.exec_waiting.pop(key, None)
            return
        headers = dict(msg.properties.get("application_headers") or {})
        queue = headers.pop(WAITING_HEADER)
        job_id = json.loads(msg.body)["id"]
        self.state.exec_holders[key] = job_id
        broker.publish_confirmed(self.confirm_channel, [broker.Outgoing(
            broker.queue_name(self.partition, queue), msg.body, headers or None, job_id)],
            self.settings.confirm_timeout)
        self.publish_channel.basic_ack(msg.delivery_tag)
        left = self.state.exec_waiting.get(key, 1) - 1
        if left > 0:
            self.state.exec_waiting[key] = left
        else:
            self.state.exec_waiting.pop(key, None)
        log.info("[%s] execution key %s handed to job %s", self.partition, key, job_id)

    def op_cancel(self, request: dict) -> dict:
        job_id = request["job_id"]
        self.state.cancel(job_id, time.time())
        self._save()
        self._broadcast({"type": "cancel", "job_id": job_id})
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
