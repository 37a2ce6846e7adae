"""The watcher: one process per node that keeps idle queues and idle partitions for almost nothing.

A queue with no message for `idle_after` seconds gives back its consumer
process, its workers and its connection; a partition whose queues are all
idle gives back its supervisor and its coordinator process too. The
watcher stands in for all of them, on one connection:

- it consumes every idle queue with a prefetch of 1. When a message comes,
  it cancels that subscription, hands the message back to the queue
  (RabbitMQ marks it `redelivered`) and tells the root (`Wake`), which
  starts the queue's consumer, and its partition first if need be;
- it hosts the coordinator of every idle partition: a `CoordinatorCore`
  per partition on ``<partition>.global`` (active or standby, as RabbitMQ
  decides), so key claims, cancels and pauses are answered as fast as by a
  coordinator process. When the partition wakes, its own coordinator
  subscribes, then the watcher's core leaves and the next in line takes
  over from the persisted state;
- it follows each watched partition's events, so a paused queue is not
  consumed (nothing wakes it) until it is resumed.

The root tells it what to watch with `Watch` (idempotent: the whole wish
for one partition) and reads its view with `WatcherStatus`. It never runs
job code, and no callbacks; a request that fails is answered with an
error, as in a coordinator process. See docs/operating.md, "Idle queues",
for what this means for crash isolation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import amqp

import supervision
from roger.amqp import rpc, topology
from roger.amqp.service import Service
from roger.errors import BrokerError
from roger.partition.coordinator import Channels, CoordinatorCore
from roger.settings import Settings
from supervision import ChildSpec

__all__ = ["CHILD_ID", "Wake", "Watch", "Watcher", "WatcherStatus", "watcher_spec"]

log = logging.getLogger("roger.watcher")

CHILD_ID = "roger.watcher"
STATE_TIMEOUT = 10.0  # seconds to learn the partitions' paused queues at start


# ------------------------------------------------------------- requests and events


@dataclass(frozen=True)
class Watch:
    """Call: watch `queues` of `partition` and host its coordinator if `coordinator`.

    The whole wish for the partition: queues left out are no longer watched;
    no queues and no coordinator forgets the partition.
    """

    partition: str
    queues: tuple[str, ...] = ()
    coordinator: bool = False


@dataclass(frozen=True)
class WatcherStatus:
    """Call: ``{partition: {"coordinator": {...} or None, "queues": {queue: {...}}}}``."""


@dataclass(frozen=True)
class Wake:
    """Event to the root: a message arrived in an idle queue."""

    partition: str
    queue: str


def watcher_spec(settings: Settings, plan: dict[str, Watch]) -> ChildSpec:
    """The root's child; `plan` is the root's live dict, copied into each (re)start."""
    return ChildSpec(CHILD_ID, run_watcher, args=(settings, plan), notify_ready=True,
                     # A first start declares ~7 queues a partition, one round
                     # trip each: 45-55 ms a partition measured on quorum queues.
                     start_timeout=60.0 + 0.2 * len(plan), shutdown=5.0)


def run_watcher(settings: Settings, plan: dict[str, Watch]) -> None:
    """The watcher process main (child ``roger.watcher`` of the root)."""
    Watcher(settings, plan).run()


# ---------------------------------------------------------------------- the process


class Watcher(Service):
    reconnect = True  # a broker outage must not bring the node down; idle queues wait

    def __init__(self, settings: Settings, plan: dict[str, Watch]) -> None:
        super().__init__(settings, "watcher")
        self.plan = dict(plan)
        self.cores: dict[str, CoordinatorCore] = {}
        self.paused: dict[str, set[str]] = {}  # partition -> paused queues, once known
        self.subscribed: dict[tuple[str, str], str] = {}  # (partition, queue) -> ctag
        self.by_ctag: dict[str, tuple[str, str]] = {}
        self.followed: set[str] = set()  # partitions whose events we follow
        self.declared: set[tuple[str, str]] = set()
        self.asked: dict[str, str] = {}  # state request correlation id -> partition

    def __repr__(self) -> str:
        return (f"<Watcher: {len(self.plan)} partitions, {len(self.subscribed)} queues "
                f"consumed, {len(self.cores)} coordinators>")

    # ------------------------------------------------------------------- setup

    def setup(self) -> None:
        self.channels = Channels.open(self.conn)  # the hosted coordinators'
        self.watch_channel = self.conn.channel()
        self.watch_channel.basic_qos(0, 1, False)  # one message wakes a queue
        self.events_channel = self.conn.channel()
        self.events_queue = self.events_channel.queue_declare(
            "", exclusive=True, auto_delete=True).queue
        self.events_channel.basic_consume(self.events_queue, no_ack=True,
                                          callback=self.later(self._on_event))
        self.replies = rpc.Replies(self.events_channel, self.later(self._on_state))
        self.status_channel: amqp.Channel | None = None
        # Declarations on their own channel: one that fails (a queue declared
        # elsewhere with other arguments) closes it, never the consuming one.
        self.declare_channel = self.conn.channel()
        # A reconnect starts from scratch: the broker forgot our subscriptions.
        self.cores.clear()
        self.paused.clear()
        self.subscribed.clear()
        self.by_ctag.clear()
        self.followed.clear()
        self.declared.clear()
        for watch in list(self.plan.values()):
            self.apply(watch)
        self._await_states()
        log.info("watching %d queues of %d partitions, hosting %d coordinators",
                 sum(len(w.queues) for w in self.plan.values()), len(self.plan),
                 len(self.cores))

    def _await_states(self) -> None:
        """Learn every watched partition's paused queues before reporting ready."""
        bound = self.settings.confirm_timeout + STATE_TIMEOUT
        deadline = time.monotonic() + bound
        while self.asked and (left := deadline - time.monotonic()) > 0:
            try:
                self.amqp.drain_events(timeout=min(left, 0.1))
            except TimeoutError:
                pass
            self.run_inbox()
        if self.asked:
            log.warning("no state for %d partitions within %g s; their queues are "
                        "watched once it comes", len(self.asked), bound)

    def timeout(self) -> float:
        # The hosted coordinators' periodic slots (see roger.partition.periodic).
        waits = [w for core in self.cores.values() if (w := core.wake_in()) is not None]
        return min([super().timeout(), *waits])

    def on_turn(self, ready: set[Any]) -> None:
        for core in list(self.cores.values()):
            core.on_turn()

    # ---------------------------------------------------------------- the plan

    def handle_call(self, payload: Any) -> Any:
        if isinstance(payload, Watch):
            self.apply(payload)
            return None
        if isinstance(payload, WatcherStatus):
            return self.status()
        return super().handle_call(payload)

    def apply(self, watch: Watch) -> None:
        p = watch.partition
        if watch.queues or watch.coordinator:
            self.plan[p] = watch
        else:
            self.plan.pop(p, None)
        if watch.coordinator and p not in self.cores:
            core = CoordinatorCore(p, self.settings, self.channels, self.later)
            core.subscribe()
            self.cores[p] = core
        elif not watch.coordinator and p in self.cores:
            self.cores.pop(p).unsubscribe()
            log.info("[%s] coordinator handed back to the partition", p)
        if watch.queues and p not in self.followed:
            self._follow(p)
        elif not watch.queues and p in self.followed:
            self._unfollow(p)
        self._refresh(p)

    def _follow(self, p: str) -> None:
        """Bind to the partition's events, then ask its state (nothing falls in between)."""
        topology.declare_global(self.events_channel, self.settings, p)
        self.events_channel.queue_bind(self.events_queue,
                                       topology.events_exchange_name(self.settings, p))
        self.followed.add(p)
        corr = self.replies.send("", topology.global_queue_name(p), {"op": "state"})
        self.asked[corr] = p

    def _unfollow(self, p: str) -> None:
        self.events_channel.queue_unbind(self.events_queue,
                                         topology.events_exchange_name(self.settings, p))
        self.followed.discard(p)
        self.paused.pop(p, None)

    def _refresh(self, p: str) -> None:
        """Consume exactly the watched queues that are known not to be paused."""
        watch = self.plan.get(p)
        wanted = set(watch.queues) if watch else set()
        paused = self.paused.get(p)
        for key in [k for k in self.subscribed if k[0] == p]:
            if key[1] not in wanted or (paused is not None and key[1] in paused):
                self._unsubscribe(key)
        if paused is None:
            return  # its state is on the way
        for q in sorted(wanted - paused):
            if (p, q) not in self.subscribed:
                self._subscribe(p, q)

    def _subscribe(self, p: str, q: str) -> None:
        if (p, q) not in self.declared:
            try:
                topology.declare_queues(self.declare_channel, self.settings, p, q, retry=False)
            except BrokerError as e:
                log.error("[%s/%s] cannot declare the queue, so it is not watched: %s", p, q, e)
                self.declare_channel = self.conn.channel()
                return
            self.declared.add((p, q))
        ctag = self.watch_channel.basic_consume(topology.queue_name(p, q),
                                                callback=self.later(self._on_message),
                                                on_cancel=self.later(self._on_cancelled))
        self.subscribed[(p, q)] = ctag
        self.by_ctag[ctag] = (p, q)

    def _on_cancelled(self, ctag: str) -> None:
        """RabbitMQ cancelled a subscription: its queue was deleted. Declare it again."""
        key = self.by_ctag.pop(ctag, None)
        if key is None:
            return
        self.subscribed.pop(key, None)
        self.declared.discard(key)
        log.warning("[%s/%s] the broker cancelled the watch (queue deleted?); declaring it "
                    "again", *key)
        self._refresh(key[0])

    def _unsubscribe(self, key: tuple[str, str]) -> None:
        ctag = self.subscribed.pop(key)
        self.by_ctag.pop(ctag, None)
        self.watch_channel.basic_cancel(ctag)

    # ------------------------------------------------------------------ events

    def _on_message(self, msg: amqp.Message) -> None:
        """A message in an idle queue: give it back and wake the queue."""
        key = self.by_ctag.get(msg.delivery_info["consumer_tag"])
        if key is not None:
            self._unsubscribe(key)
        # Back to the head of its queue, for the consumer about to start.
        self.watch_channel.basic_reject(msg.delivery_tag, requeue=True)
        if key is None:
            return  # a subscription we had already cancelled
        p, q = key
        watch = self.plan.get(p)
        if watch is not None:  # watched no more until the root says otherwise
            self.plan[p] = Watch(p, tuple(x for x in watch.queues if x != q), watch.coordinator)
        log.info("[%s/%s] message %s arrived: waking the queue", p, q,
                 msg.properties.get("message_id", "?"))
        if supervision.is_supervised():
            supervision.parent().event(Wake(p, q))

    def _on_state(self, corr: str, body: dict) -> None:
        p = self.asked.pop(corr, None)
        if p is None or p not in self.followed:
            return
        self.paused[p] = set(body.get("paused", []))
        self._refresh(p)

    def _on_event(self, msg: amqp.Message) -> None:
        exchange = msg.delivery_info.get("exchange", "")
        prefix = f"{self.settings.system_exchange_prefix}."
        p = exchange[len(prefix):-len(".events")] if exchange.endswith(".events") else ""
        try:
            event = json.loads(msg.body)
        except ValueError:
            return
        paused = self.paused.get(p)
        if paused is None or event.get("type") not in ("pause", "resume"):
            return
        if event["type"] == "pause":
            paused.add(event["queue"])
        else:
            paused.discard(event["queue"])
        self._refresh(p)

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        counts = topology.count_messages(
            self._status_channel, [topology.queue_name(p, q)
                                   for p, watch in self.plan.items() for q in watch.queues])
        out: dict[str, Any] = {}
        for p, watch in self.plan.items():
            core = self.cores.get(p)
            paused = self.paused.get(p)
            queues = {}
            for q in watch.queues:
                messages, consumers = counts.get(topology.queue_name(p, q)) or (0, 0)
                queues[q] = {"paused": None if paused is None else q in paused,
                             "watched": (p, q) in self.subscribed,
                             "message_count": messages, "consumer_count": consumers}
            out[p] = {"coordinator": core.status() if core else None, "queues": queues}
        return out

    def _status_channel(self) -> Any:
        # Its own channel: a missing queue closes the channel it was counted on.
        if self.status_channel is None or not self.status_channel.is_open:
            self.status_channel = self.conn.channel()
        return self.status_channel
