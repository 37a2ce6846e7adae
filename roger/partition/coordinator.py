"""The coordinator process: a partition's global state, one active per cluster.

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

Consumers talk to it through `roger.partition.coordinator_link`, every
other process through `roger.partition.coordination`; the state itself is
`roger.partition.state`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import amqp

from roger.amqp import publish, topology
from roger.amqp.service import Service
from roger.partition.persister import load_persister
from roger.partition.state import State
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


class Coordinator(Service):
    """Serves ``<partition>.global``: requests in order, one at a time, no locks."""

    def __init__(self, partition: str, settings: Settings) -> None:
        super().__init__(settings, partition)
        self.partition = partition
        self.persister = load_persister(settings)
        self.state = State()
        self.active = False
        self.queue = topology.global_queue_name(partition)
        self.exchange = topology.events_exchange_name(settings, partition)
        self.channel: amqp.Channel  # consumes the requests; the next two publish
        self.publish_channel: amqp.Channel
        self.confirm_channel: amqp.Channel

    def __repr__(self) -> str:
        role = "active" if self.active else "standby"
        return (f"<Coordinator {self.partition!r} {role}: {len(self.state.queue_keys)} queue "
                f"keys, {len(self.state.exec_holders)} execution keys held, "
                f"{len(self.state.cancelled)} cancelled, paused {sorted(self.state.paused)}>")

    def setup(self) -> None:
        self.channel = self.conn.channel()
        topology.declare_global(self.channel, self.settings, self.partition)
        self.publish_channel = self.conn.channel()
        self.confirm_channel = self.conn.channel()  # publish_confirmed owns its channel
        self.channel.basic_qos(0, 1, False)
        # Active or standby is RabbitMQ's choice; we learn we are active when
        # a request arrives, and load the state then (see the module doc).
        self.channel.basic_consume(self.queue, callback=self._on_request)

    def handle_call(self, payload: Any) -> Any:
        if isinstance(payload, CoordinatorStatus):
            return {"active": self.active, "queue_keys": len(self.state.queue_keys),
                    "paused": sorted(self.state.paused)}
        return super().handle_call(payload)

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
        waiting = topology.declare_waiting(self.publish_channel, self.partition, key)
        msg = self.publish_channel.basic_get(waiting, no_ack=False)
        if msg is None:
            self.state.exec_waiting.pop(key, None)
            return
        headers = dict(msg.properties.get("application_headers") or {})
        queue = headers.pop(topology.WAITING_HEADER)
        job_id = json.loads(msg.body)["id"]
        self.state.exec_holders[key] = job_id
        publish.publish_confirmed(self.confirm_channel, [publish.Outgoing(
            topology.queue_name(self.partition, queue), msg.body, headers or None, job_id)],
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
