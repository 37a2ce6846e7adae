"""A consumer's side of its partition's global state.

On the consumer's own AMQP connection: it fetches the state it needs at
start (paused queues, cancelled job ids), then follows the partition's
event broadcasts (cancel, pause, resume) through an exclusive queue bound
to the partition's fanout exchange. Keyed jobs talk to the coordinator:
execution keys are acquired asynchronously (the reply arrives like any
other delivery, so the consumer's loop never blocks on it) and keys are
released with persistent, confirmed notices, which the coordinator acks
only once applied.

Twin locks (`roger.partition.twin_locks`) go the same way: acquired
asynchronously (`acquire_twin`; the coordinator may answer much later,
when the lock comes to this delivery), released with confirmed notices,
renewed with transient ones while held. The ids producers registered as
enqueued again are kept like cancelled ids (`knows_twin`).
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import amqp

from roger.amqp import publish, rpc
from roger.amqp.topology import (
    WAITING_HEADER,
    declare_global,
    declare_links,
    declare_waiting,
    events_exchange_name,
    global_queue_name,
    links_queue_name,
)
from roger.partition.state import CANCELLED_TTL
from roger.record import Record
from roger.settings import Settings

__all__ = ["CoordinatorLink"]

log = logging.getLogger("roger.consumer")

STATE_TIMEOUT = 10.0  # seconds to get the state at start; no coordinator -> no start


class CoordinatorLink:
    """A consumer's view of its partition's global state, on the consumer's connection.

    `on_event(event)` follows every broadcast (after the view is updated);
    `on_acquired(context, ok)` answers each `acquire`, `on_twin(context, ok)`
    each `acquire_twin`.
    """

    def __init__(self, conn: Any, settings: Settings, partition: str,
                 on_event: Callable[[dict], None],
                 on_acquired: Callable[[Any, bool], None],
                 on_twin: Callable[[Any, bool], None] | None = None) -> None:
        self.settings, self.partition = settings, partition
        self.on_event, self.on_acquired = on_event, on_acquired
        self.on_twin = on_twin
        self.queue = global_queue_name(partition)
        self.channel = conn.channel()
        self.confirm_channel = conn.channel()  # publish_confirmed owns its channel
        declare_global(self.channel, settings, partition)
        self.pending: dict[str, Any] = {}  # correlation id -> job awaiting acquire
        self.paused: set[str] = set()
        # Cancelled ids, forgotten when the coordinator forgets them (24 h, or
        # until the partition's last delayed job is due): a consumer that runs
        # for months must not keep every id ever cancelled.
        self.cancelled: dict[str, float] = {}  # job id -> forget after (monotonic)
        self._expiry: list[tuple[float, str]] = []  # a heap of (forget after, job id)
        # Ids enqueued again, whose every delivery takes the twin lock; kept as long.
        self.twin_ids: dict[str, float] = {}  # job id -> forget after (monotonic)
        self._twin_expiry: list[tuple[float, str]] = []
        self.twin_pending: dict[str, Any] = {}  # correlation id -> delivery awaiting its lock
        self.twin_seq = 0  # registrations the coordinator had made when we fetched the state

    def __repr__(self) -> str:
        return (f"<CoordinatorLink {self.partition!r}: paused {sorted(self.paused)}, "
                f"{len(self.cancelled)} cancelled, {len(self.pending)} key requests pending>")

    def start(self) -> None:
        """Subscribe to broadcasts, then fetch the state (so nothing falls in between)."""
        # On the roll call first, so that the coordinator counts us in every
        # registration it broadcasts after our state fetch (see twin_ops).
        declare_links(self.channel, self.partition)
        self.channel.basic_consume(links_queue_name(self.partition), no_ack=True,
                                   callback=lambda msg: None)  # nothing is sent there
        q = self.channel.queue_declare("", exclusive=True, auto_delete=True).queue
        self.channel.queue_bind(q, events_exchange_name(self.settings, self.partition))
        self.channel.basic_consume(q, callback=self._on_broadcast, no_ack=True)
        state = rpc.call(self.channel, self.queue, {"op": "state"}, STATE_TIMEOUT)
        self.paused = set(state.get("paused", []))
        until = state.get("cancelled_until") or {}
        for job_id in state.get("cancelled", []):
            self._remember_cancelled(job_id, until.get(job_id))
        self.twin_seq = int(state.get("twin_seq", 0))
        for job_id, forget in (state.get("twins") or {}).items():
            self._remember(self.twin_ids, self._twin_expiry, job_id, forget)
        self.replies = rpc.Replies(self.channel, self._on_reply)

    def _on_broadcast(self, msg: amqp.Message) -> None:
        try:
            event = json.loads(msg.body)
        except ValueError:
            return
        if event.get("type") == "cancel":
            self._remember_cancelled(event["job_id"], event.get("until"))
        elif event.get("type") == "twins":
            for job_id in event.get("ids", []):
                self._remember(self.twin_ids, self._twin_expiry, job_id, event.get("until"))
        elif event.get("type") == "pause":
            self.paused.add(event["queue"])
        elif event.get("type") == "resume":
            self.paused.discard(event["queue"])
        self.on_event(event)

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    def counted(self, event: dict) -> bool:
        """Whether the coordinator counted us in for this `twins` broadcast (we answer it)."""
        return int(event.get("seq", 0)) > self.twin_seq

    def knows_twin(self, job_id: str) -> bool:
        """Whether `job_id` was enqueued again (registered): its deliveries take the lock."""
        return job_id in self.twin_ids

    def _remember_cancelled(self, job_id: str, until: float | None = None) -> None:
        self._remember(self.cancelled, self._expiry, job_id, until)

    @staticmethod
    def _remember(ids: dict[str, float], expiry: list[tuple[float, str]], job_id: str,
                  until: float | None = None) -> None:
        """Remember `job_id` until epoch time `until` (at least `CANCELLED_TTL`)."""
        now = time.monotonic()
        while expiry and expiry[0][0] <= now:
            forget, old = heapq.heappop(expiry)
            if ids.get(old) == forget:  # not remembered again since
                del ids[old]
        ttl = CANCELLED_TTL if until is None else max(CANCELLED_TTL, until - time.time())
        ids[job_id] = forget = now + ttl
        heapq.heappush(expiry, (forget, job_id))

    # ------------------------------------------------------------ execution keys

    def acquire(self, job: Record, context: Any) -> None:
        """Ask for `job.execution_key`; `on_acquired(context, ok)` follows when it answers."""
        corr = self.replies.send("", self.queue, {"op": "acquire", "key": job.execution_key,
                                                  "job_id": job.id})
        self.pending[corr] = context

    def _on_reply(self, corr: str, body: dict) -> None:
        context = self.pending.pop(corr, None)
        if context is not None:
            self.on_acquired(context, bool(body.get("ok")))
            return
        context = self.twin_pending.pop(corr, None)
        if context is not None and self.on_twin is not None:
            self.on_twin(context, bool(body.get("ok")))

    # ---------------------------------------------------------------- twin locks

    def acquire_twin(self, job_id: str, token: str, context: Any, *, claim: bool,
                     wait: bool) -> None:
        """Ask for `job_id`'s twin lock for delivery `token`; `on_twin(context, ok)` follows.

        With `wait`, the answer comes when the lock is ours (it may take as
        long as the twin runs); without, at once (False: another holds it).
        """
        corr = self.replies.send("", self.queue, {"op": "twin_acquire", "job_id": job_id,
                                                  "token": token, "claim": claim, "wait": wait})
        self.twin_pending[corr] = context

    def forget_twin_request(self, context: Any) -> None:
        """Stop waiting for the answer about `context` (release it: the lock may be ours)."""
        for corr, pending in list(self.twin_pending.items()):
            if pending is context:
                del self.twin_pending[corr]

    def release_twin(self, job_id: str, token: str) -> None:
        """Give the lock back (or leave the line): confirmed, as a queue key's release."""
        self._notify({"op": "twin_release", "job_id": job_id, "token": token})

    def seen_twins(self, ids: list[str], consumer: str) -> None:
        """Tell the coordinator `consumer` heard of `ids` (after its claims).

        On the channel the claims went out on, so it arrives after them.
        """
        self.channel.basic_publish(
            amqp.Message(json.dumps({"op": "twin_seen", "ids": ids, "consumer": consumer}),
                         content_type="application/json"),
            exchange="", routing_key=self.queue)

    def renew_twins(self, pairs: list[tuple[str, str]]) -> None:
        """Tell the coordinator these holders are alive (transient: the next one follows)."""
        self.channel.basic_publish(
            amqp.Message(json.dumps({"op": "twin_renew", "pairs": pairs}),
                         content_type="application/json"),
            exchange="", routing_key=self.queue)

    def park(self, job: Record, body: bytes, queue: str, headers: dict | None = None) -> None:
        """Queue `job` FIFO in its key's waiting queue and tell the coordinator.

        `headers` go with it (a twin's mark, see `roger.partition.twin_locks`).
        """
        waiting = declare_waiting(self.channel, self.settings, self.partition,
                                  job.execution_key)
        publish.publish_confirmed(self.confirm_channel, [publish.Outgoing(
            waiting, body, {**(headers or {}), WAITING_HEADER: queue}, job.id)],
            self.settings.confirm_timeout)
        self._notify({"op": "parked", "key": job.execution_key})

    def release_exec(self, job: Record) -> None:
        self._notify({"op": "release_exec", "key": job.execution_key, "job_id": job.id})

    def release_queue_key(self, key: str, job_id: str) -> None:
        """Free `key` if `job_id` still holds it."""
        self._notify({"op": "release", "key": key, "job_id": job_id})

    def _notify(self, request: dict) -> None:
        # Persistent and confirmed: a release must survive a broker restart,
        # or the key would stay taken.
        publish.publish_confirmed(self.confirm_channel, [publish.Outgoing(
            self.queue, json.dumps(request).encode())], self.settings.confirm_timeout)
