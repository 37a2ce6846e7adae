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
from multiprocess.connection import wait

import supervision
from roger.amqp import broker, frames, rpc
from supervision import ChildSpec

log = logging.getLogger("roger.system")


PRESENCE_INTERVAL = 1.0
PRESENCE_TTL = 3.5
STATUS_TIMEOUT = 10.0


def system_exchange_name(settings: Any) -> str:
    return f"{settings.system_exchange_prefix}.system"


def declare_system(channel: amqp.Channel, settings: Any) -> str:
    name = system_exchange_name(settings)
    channel.exchange_declare(name, "fanout", durable=True, auto_delete=False)
    return name


def system_spec(settings: Any) -> ChildSpec:
    # Started once its process runs (no ready handshake): it connects, and
    # reconnects, on its own, so a broker outage never blocks or fails the node.
    return ChildSpec("roger.system", run_system, args=(settings,), shutdown=2.0)


def run_system(settings: Any) -> None:
    """The system process main (child ``roger.system`` of the root)."""
    system = System(settings)
    delay = 0.5
    while True:
        try:
            system.run()
            return
        except frames.CONNECTION_ERRORS as e:
            log.warning("system: broker connection lost or refused (%s); retrying in %.1f s",
                        e, delay)
        time.sleep(delay)  # backoff between reconnects, capped
        delay = min(delay * 2, 30.0)


class System:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.peers: dict[str, float] = {}

    def run(self) -> None:
        s = self.settings
        conn = frames.connect(s)
        self.conn, self.amqp = conn, conn.connection
        self.channel = conn.channel()
        self.exchange = declare_system(self.channel, s)
        q = self.channel.queue_declare("", exclusive=True, auto_delete=True).queue
        self.channel.queue_bind(q, self.exchange)
        self.channel.basic_consume(q, callback=self._on_message, no_ack=True)
        self._announce()
        self._loop()

    def _loop(self) -> None:
        parent = supervision.parent() if supervision.is_supervised() else None
        next_announce = time.monotonic() + PRESENCE_INTERVAL
        last_beat = time.monotonic()
        while True:
            objs = [self.amqp.sock] + ([parent.conn] if parent and not parent.closed else [])
            ready = wait(objs, max(0.0, next_announce - time.monotonic()))
            if self.amqp.sock in ready:
                frames.drain_pending(self.amqp)
            if parent is not None and parent.conn in ready:
                try:
                    while parent.pending():
                        parent.recv(0)  # nothing to answer: casts (drain) are ignored
                except supervision.SupervisorGone:
                    return
            now = time.monotonic()
            if now >= next_announce:
                self._announce()
                next_announce = now + PRESENCE_INTERVAL
            if now - last_beat >= (self.settings.heartbeat or 20) / 4:
                self.conn.heartbeat_check()
                last_beat = now

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
        status = supervision.parent().call(("status",), STATUS_TIMEOUT)
        if cmd == "partitions":
            return partitions_view(status)
        if cmd == "running_jobs":
            return running_view(status, body.get("partition"))
        raise ValueError(f"unknown system command {cmd!r}")


def partitions_view(status: dict) -> dict:
    """A node's status in the shape of `roger.info.partitions()`."""
    running = {
        partition: {
            q: {k: info.get(k) for k in ("max_workers", "paused", "message_count",
                                          "consumer_count")}
            for q, info in p.get("queues", {}).items() if isinstance(info, dict)
        }
        for partition, p in status.get("running", {}).items()
    }
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


def gather(settings: Any, cmd: str, timeout: float = 1.0, **args: Any) -> dict[str, Any]:
    """Call every live node; returns ``{node: data}`` (nodes that failed are left out)."""
    with broker.get_broker(settings).channel() as channel:
        exchange = declare_system(channel, settings)

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
