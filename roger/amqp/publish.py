"""Publishing with publisher confirms: a batch, one round trip.

`publish_confirmed` publishes a batch on a channel in confirm mode and
waits for every ack at once. The producer (`roger.amqp.broker`), the
consumer's settlement and the coordinator all publish through it.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import amqp

from roger.amqp.connection import translate_errors
from roger.amqp.frames import drain_pending
from roger.errors import BrokerError

__all__ = ["Outgoing", "Unroutable", "publish_confirmed"]

CONTENT_TYPE = "application/json"
PERSISTENT = 2
# While publishing a big batch, read pending acks every so many messages so
# the broker's confirms never pile up unread in the socket.
_DRAIN_EVERY = 256


class Outgoing(NamedTuple):
    """One message to publish, through the default exchange unless `exchange` is set."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    content_type: str | None = CONTENT_TYPE
    exchange: str = ""


class Unroutable(BrokerError):
    """Some messages had no queue to go to (RabbitMQ returned them).

    `indices` are their positions in the published batch. Declare the
    queues and publish those messages again.
    """

    def __init__(self, indices: list[int], routing_keys: set[str]) -> None:
        self.indices = indices
        self.routing_keys = routing_keys
        super().__init__(f"no queue named {', '.join(sorted(routing_keys))}")


class Nacked(BrokerError):
    """RabbitMQ refused messages; the channel itself is still fine."""


class ConfirmTimeout(BrokerError):
    """Confirms did not arrive in time: the connection is suspect."""


class _Batch:
    """The tags of one `publish_confirmed` call and what became of them."""

    __slots__ = ("first", "last", "nacked", "remaining")

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.remaining = last - first + 1
        self.nacked = 0


class _Confirms:
    """Publisher-confirm bookkeeping for one channel.

    RabbitMQ numbers the messages published on a confirm channel 1, 2, ...
    and acks (or nacks) them by that number, `multiple` meaning "and every
    lower one". Unroutable `mandatory` messages come back as basic.return
    before their ack. Batches may nest: a consumer callback dispatched while
    one batch waits can publish (and wait for) another on the same channel.
    """

    def __init__(self, channel: amqp.Channel) -> None:
        channel.confirm_select()
        # py-amqp clears this flag when it silently reopens ("revives") a
        # channel that RabbitMQ closed; the reopened channel is no longer in
        # confirm mode and numbers from 1 again, so this record is stale.
        channel._confirm_selected = True
        self.next_tag = 1
        self.pending: set[int] = set()
        self.batches: list[_Batch] = []
        self.returned: list[tuple[str, bytes]] = []
        channel.events["basic_ack"].add(self.on_ack)
        channel.events["basic_nack"].add(self.on_nack)
        channel.events["basic_return"].add(self.on_return)

    def detach(self, channel: amqp.Channel) -> None:
        channel.events["basic_ack"].discard(self.on_ack)
        channel.events["basic_nack"].discard(self.on_nack)
        channel.events["basic_return"].discard(self.on_return)

    def settle(self, tag: int, multiple: bool, nacked: bool) -> None:
        pending = self.pending
        if not multiple:
            if tag not in pending:
                return
            pending.discard(tag)
            done: Iterable[int] = (tag,)
        elif tag >= self.next_tag - 1:  # covers every tag handed out so far
            done, self.pending = pending, set()
        else:
            done = {t for t in pending if t <= tag}
            pending -= done
        batches = self.batches
        for t in done:
            for batch in batches:  # nearly always one
                if batch.first <= t <= batch.last:
                    batch.remaining -= 1
                    batch.nacked += nacked
                    break

    def on_ack(self, tag: int, multiple: bool) -> None:
        self.settle(tag, multiple, False)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self.settle(tag, multiple, True)

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        body = message.body
        self.returned.append((routing_key, body.encode() if isinstance(body, str) else body))


# Weak: a discarded channel takes its bookkeeping with it.
_confirms: weakref.WeakKeyDictionary[amqp.Channel, _Confirms] = weakref.WeakKeyDictionary()


def publish_confirmed(channel: amqp.Channel, items: Sequence[Outgoing], timeout: float) -> None:
    """Publish `items` persistently and wait until RabbitMQ confirmed them all.

    One round trip for the whole batch. The first call puts `channel` in
    confirm mode; publish on it only through this function from then on
    (it counts delivery tags). While waiting, other frames of the connection
    are dispatched as usual, so deliveries reach their consumer callbacks,
    and those may call this function again (on this channel too).

    Raises `Unroutable` when a queue is missing, `BrokerError` on a nack or
    when confirms take longer than `timeout` seconds (then nothing is known
    about the unconfirmed messages: discard the channel), and `BrokerError`
    for transport errors.
    """
    if not items:
        return
    with translate_errors():
        confirms = _confirms.get(channel)
        if confirms is None or not channel._confirm_selected:
            if confirms is not None:
                confirms.detach(channel)
            confirms = _confirms[channel] = _Confirms(channel)
        # py-amqp's basic_publish waits for each confirm when the connection
        # has confirm_publish set; _basic_publish never does.
        publish = channel._basic_publish
        connection = channel.connection
        if not confirms.batches:
            confirms.returned.clear()  # leftovers of a batch that timed out
        first = confirms.next_tag
        batch = _Batch(first, first + len(items) - 1)
        confirms.batches.append(batch)
        try:
            with _CoalescedWrites(connection.transport) as writes:
                _publish_all(publish, confirms, items, writes, connection)
            deadline = time.monotonic() + timeout
            while batch.remaining > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConfirmTimeout(
                        f"RabbitMQ did not confirm {batch.remaining} of {len(items)} "
                        f"message(s) within {timeout:g} s; they may or may not be queued"
                    )
                try:
                    connection.drain_events(timeout=remaining)
                except TimeoutError:
                    continue
        finally:
            confirms.batches.remove(batch)
    if batch.nacked:
        raise Nacked(f"RabbitMQ refused (nacked) {batch.nacked} of {len(items)} messages")
    if confirms.returned:
        unroutable = _take_returned(items, confirms.returned)
        if unroutable.indices:
            raise unroutable


def _publish_all(publish: Callable[..., Any], confirms: _Confirms, items: Sequence[Outgoing],
                 writes: _CoalescedWrites, connection: amqp.Connection) -> None:
    tag = confirms.next_tag
    for count, item in enumerate(items, 1):
        message = amqp.Message(
            item.body,
            content_type=item.content_type,
            delivery_mode=PERSISTENT,
            message_id=item.message_id,
            application_headers=item.headers,
        )
        confirms.pending.add(tag)
        tag += 1
        confirms.next_tag = tag
        publish(message, exchange=item.exchange, routing_key=item.routing_key, mandatory=True)
        if count % _DRAIN_EVERY == 0:
            # Send what we have and take in the confirms so far: the socket
            # buffers on both sides stay small.
            writes.flush()
            drain_pending(connection)


class _CoalescedWrites:
    """Collect py-amqp's socket writes and send them together.

    py-amqp writes each message with its own `sendall`; a batch of a
    thousand messages then costs a thousand syscalls where a few dozen do.
    Every write is whole frames, so joining them changes nothing on the wire.
    """

    LIMIT = 65536

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.size = 0

    def __enter__(self) -> _CoalescedWrites:
        self.send = self.transport._write
        self.transport._write = self._collect
        return self

    def _collect(self, data: bytes) -> None:
        # py-amqp hands over a view of a frame buffer it reuses for the next
        # message: keep a copy.
        self.parts.append(bytes(data))
        self.size += len(data)
        if self.size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            self.size = 0
            self.send(data)

    def __exit__(self, *exc: object) -> None:
        self.transport._write = self.send
        self.flush()


def _take_returned(items: Sequence[Outgoing], returned: list[tuple[str, bytes]]) -> Unroutable:
    # basic.return carries no delivery tag: match messages by key and body,
    # taking the matched returns out of the channel's list.
    wanted = Counter((item.routing_key, item.body) for item in items)
    matched: Counter[tuple[str, bytes]] = Counter()
    keep = []
    for entry in returned:
        if matched[entry] < wanted[entry]:
            matched[entry] += 1
        else:
            keep.append(entry)
    returned[:] = keep
    indices = []
    for index, item in enumerate(items):
        key = (item.routing_key, item.body)
        if matched[key] > 0:
            matched[key] -= 1
            indices.append(index)
    return Unroutable(indices, {item.routing_key for item in (items[i] for i in indices)})
