"""Request and reply over RabbitMQ's direct reply-to.

The caller consumes the pseudo-queue ``amq.rabbitmq.reply-to`` on its
channel (no queue is created), publishes the request with that `reply_to`
and a correlation id, and reads replies as they come. `call` waits for one
reply; `Replies` keeps a subscription open for callers that wait for many
(the system's cluster-wide calls) or do not wait at all (the consumer).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import amqp

from roger.errors import BrokerError

REPLY_TO = "amq.rabbitmq.reply-to"


class Replies:
    """A direct reply-to subscription on `channel`; `on_reply(corr_id, body)` per reply."""

    def __init__(self, channel: amqp.Channel, on_reply: Callable[[str, dict], None]) -> None:
        self.channel = channel
        self.on_reply = on_reply
        self.ctag = channel.basic_consume(REPLY_TO, callback=self._on_message, no_ack=True)

    def _on_message(self, msg: amqp.Message) -> None:
        try:
            body = json.loads(msg.body)
        except ValueError:
            return
        self.on_reply(msg.properties.get("correlation_id", ""), body)

    def send(self, exchange: str, routing_key: str, request: dict) -> str:
        """Publish `request`; returns its correlation id."""
        corr = secrets.token_hex(8)
        self.channel.basic_publish(
            amqp.Message(json.dumps(request), content_type="application/json",
                         correlation_id=corr, reply_to=REPLY_TO),
            exchange=exchange, routing_key=routing_key)
        return corr

    def close(self) -> None:
        try:
            self.channel.basic_cancel(self.ctag)
        except Exception:
            pass


def call(channel: amqp.Channel, routing_key: str, request: dict, timeout: float,
         exchange: str = "") -> dict:
    """Send one request and wait up to `timeout` s for its reply."""
    got: dict[str, dict] = {}
    replies = Replies(channel, lambda corr, body: got.__setitem__(corr, body))
    try:
        corr = replies.send(exchange, routing_key, request)
        deadline = time.monotonic() + timeout
        while corr not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(f"no reply to {request.get('op', request)!r} on "
                                  f"{routing_key or exchange!r} within {timeout:g} s")
            try:
                channel.connection.drain_events(timeout=left)
            except TimeoutError:
                pass
        return got[corr]
    finally:
        replies.close()


def gather(channel: amqp.Channel, exchange: str, request: dict, timeout: float,
           done: Callable[[list[dict]], bool]) -> list[dict]:
    """Publish `request` to a fanout and collect replies until `done(replies)` or `timeout`."""
    got: list[dict] = []
    corr_box: dict[str, Any] = {}
    replies = Replies(channel, lambda corr, body: got.append(body)
                      if corr == corr_box.get("corr") else None)
    try:
        corr_box["corr"] = replies.send(exchange, "", request)
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                channel.connection.drain_events(timeout=left)
            except TimeoutError:
                pass
        return got
    finally:
        replies.close()
