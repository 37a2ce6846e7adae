"""The node's system process: cluster-wide calls and presence.

Every node binds an exclusive queue to the fanout exchange
``<prefix>.system``. Through it:

- presence: each node announces itself every `PRESENCE_INTERVAL` seconds
  (and at once when it starts); a peer not heard from for `PRESENCE_TTL`
  seconds is gone. So every node knows the live nodes.
- calls: any process publishes ``{"type": "call", "cmd": ...}`` with a
  reply-to; every node answers with its data and its list of live peers,
  so the caller waits for exactly the live nodes (see `gather`), bounded
  by a timeout.

The answers come from the node's root supervisor, which this process asks
over its supervision link.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import amqp

import supervision
from roger.amqp import broker, rpc, topology
from roger.amqp.service import Service
from roger.node import root
from roger.settings import Settings
from supervision import ChildSpec

__all__ = ["System", "gather", "system_spec"]

log = logging.getLogger("roger.system")

CHILD_ID = "roger.system"
PRESENCE_INTERVAL = 1.0
PRESENCE_TTL = 3.5
STATUS_TIMEOUT = 10.0


def system_spec(settings: Settings) -> ChildSpec:
    # Started once its process runs (no ready handshake): it connects, and
    # reconnects, on its own, so a broker outage never blocks or fails the node.
    return ChildSpec(CHILD_ID, run_system, args=(settings,), shutdown=2.0)


def run_system(settings: Settings) -> None:
    """The system process main (child ``roger.system`` of the root)."""
    System(settings).run()


class System(Service):
    """Presence and cluster-wide calls on ``<prefix>.system``; reconnects by itself."""

    notify_ready = False
    reconnect = True  # a broker outage must never bring the node down

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "system")
        self.node = settings.node_name
        self.peers: dict[str, float] = {}
        self.next_announce = 0.0
        self.channel: amqp.Channel
        self.exchange: str

    def __repr__(self) -> str:
        return f"<System {self.node!r}: peers {self.live_peers()}>"

    def setup(self) -> None:
        self.channel = self.conn.channel()
        self.exchange = topology.declare_system(self.channel, self.settings)
        q = self.channel.queue_declare("", exclusive=True, auto_delete=True).queue
        self.channel.queue_bind(q, self.exchange)
        self.channel.basic_consume(q, callback=self._on_message, no_ack=True)
        self.next_announce = 0.0  # at once

    def timeout(self) -> float:
        return self.next_announce - time.monotonic()

    def on_turn(self, ready: set[Any]) -> None:
        now = time.monotonic()
        if now >= self.next_announce:
            self._announce()
            self.next_announce = now + PRESENCE_INTERVAL

    def _announce(self) -> None:
        self._publish(self.exchange, "", {"type": "presence", "node": self.node,
                                          "ttl": PRESENCE_TTL})

    def _publish(self, exchange: str, routing_key: str, body: dict, **props: Any) -> None:
        self.channel.basic_publish(
            amqp.Message(json.dumps(body), content_type="application/json", **props),
            exchange=exchange, routing_key=routing_key)

    def live_peers(self) -> list[str]:
        now = time.monotonic()
        self.peers = {n: t for n, t in self.peers.items() if t > now}
        return sorted(self.peers | {self.node: now})

    def _on_message(self, msg: amqp.Message) -> None:
        try:
            body = json.loads(msg.body)
            kind = body["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("system: ignoring a malformed message: %r", msg.body[:200])
            return
        if kind == "presence":
            self.peers[str(body["node"])] = time.monotonic() + float(body.get("ttl", PRESENCE_TTL))
        elif kind == "call" and msg.properties.get("reply_to"):
            try:
                reply = {"ok": True, "data": self._answer(body)}
            except Exception as e:  # the caller gets the error, the node lives on
                log.warning("system: call %r failed: %s", body.get("cmd"), e)
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            reply.update(node=self.node, peers=self.live_peers())
            self._publish("", msg.properties["reply_to"], reply,
                          correlation_id=msg.properties.get("correlation_id"))

    def _answer(self, body: dict) -> Any:
        cmd = body.get("cmd")
        if cmd == "periodic":  # the partitions this node has periodic entries for
            return sorted({entry.partition for entry in self.settings.periodic})
        status = root.node_status(supervision.parent(), STATUS_TIMEOUT)
        if cmd == "status":
            return status
        if cmd == "partitions":
            return partitions_view(status)
        if cmd == "running_jobs":
            return running_view(status, body.get("partition"))
        if cmd == "waiting_jobs":
            return waiting_view(status, body.get("partition"), body.get("queue"))
        raise ValueError(f"unknown system command {cmd!r}")


def partitions_view(status: dict) -> dict:
    """A node's status in the shape of `roger.info.partitions()`.

    A queue's ``"delayed"`` count is there only where the partition's
    coordinator is active; `roger.info.partitions` spreads it to every node.
    """
    running = {}
    for partition, p in status.get("running", {}).items():
        coordinator = p.get("coordinator") or {}
        delayed = coordinator.get("delayed") if coordinator.get("active") else None
        queues = {}
        for q, info in p.get("queues", {}).items():
            if isinstance(info, dict):
                queues[q] = {k: info.get(k) for k in ("max_workers", "paused", "message_count",
                                                       "consumer_count")}
                if delayed is not None:
                    queues[q]["delayed"] = delayed.get(q, 0)
        running[partition] = queues
    return {"running": running, "waiting": status.get("waiting", {})}


def running_view(status: dict, partition: str | None) -> dict:
    out: dict[str, list] = {}
    for name, p in status.get("running", {}).items():
        if partition is not None and name != partition:
            continue
        entries = []
        for queue, info in p.get("queues", {}).items():
            if isinstance(info, dict):
                entries.extend({"record": r["record"], "queue": queue,
                                "started_at": r.get("started_at")}
                               for r in info.get("running", []) if "record" in r)
        out[name] = entries
    return out


def waiting_view(status: dict, partition: str | None, queue: str | None) -> list[str]:
    """The records of jobs a consumer of `partition`/`queue` holds without running them."""
    p = status.get("running", {}).get(partition, {})
    info = p.get("queues", {}).get(queue) if isinstance(p, dict) else None
    return list(info.get("waiting", [])) if isinstance(info, dict) else []


def gather(settings: Settings, cmd: str, timeout: float = 1.0, **args: Any) -> dict[str, Any]:
    """Call every live node; returns ``{node: data}`` (nodes that failed are left out)."""
    with broker.get_broker(settings).channel() as channel:
        exchange = topology.declare_system(channel, settings)

        def everyone_answered(replies: list[dict]) -> bool:
            if not replies:
                return False
            expected = set().union(*(r.get("peers", []) for r in replies))
            return expected <= {r.get("node") for r in replies}

        replies = rpc.gather(channel, exchange, {"type": "call", "cmd": cmd, **args},
                             timeout, everyone_answered)
    out = {}
    for r in replies:
        if r.get("ok"):
            out[r["node"]] = r["data"]
        else:
            log.warning("node %s could not answer %s: %s", r.get("node"), cmd, r.get("error"))
    return out
