"""Operator actions on a queue: re-enqueue buried jobs, replay rejected ones, purge."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import amqp

from roger import config, message
from roger.amqp import broker, publish, topology
from roger.amqp.connection import QueueNotFound
from roger.amqp.publish import Outgoing
from roger.errors import BadMessage
from roger.job import UnregisteredJob
from roger.partition import coordination, settlement
from roger.settings import Settings

__all__ = ["purge", "replay_rejected", "retry_buried"]

log = logging.getLogger(__name__)

# Buried or rejected messages moved per publisher-confirm round trip.
_BATCH = 500


def retry_buried(partition: str, queue: str, *, settings: Settings | None = None) -> int:
    """Move every buried job of a queue back to its main queue; return how many.

    Each job restarts with `retry_count` 0 and a new `queued_at`, keeping its
    id and args. A buried message is removed only after its copy in the main
    queue was confirmed, so a failure half-way duplicates nothing and loses
    nothing. Messages buried while this runs wait for the next call.
    """
    source = topology.buried_queue_name(partition, queue)

    def unbury(msg: Any, main: str, now: int) -> Outgoing | None:
        try:
            job = message.decode(
                msg.body, msg.properties.get("content_type"), fallback=UnregisteredJob
            )
        except BadMessage as exc:
            log.warning("leaving an invalid message in %s: %s", source, exc)
            return None
        job.retry_count = 0
        job.queued_at = now
        # A copy that may have a twin keeps its mark (see roger.partition.twin_locks).
        marked = (msg.properties.get("application_headers") or {}).get(topology.TWIN_HEADER)
        return Outgoing(main, message.encode(job), {topology.TWIN_HEADER: 1} if marked else None,
                        message_id=job.id)

    return _move(settings or config.get_settings(), partition, queue, source, unbury)


def replay_rejected(partition: str, queue: str, *, settings: Settings | None = None) -> int:
    """Send every rejected message of a queue back to its main queue; return how many.

    Each message goes back as it was rejected (body byte for byte, content
    type, message id, headers but ``x-roger-reason`` and ``x-roger-error``),
    so consumers decode it again: one that is valid now (its job class was
    deployed since, say) runs; one still invalid is rejected again, with its
    reason, and waits in ``.rejected`` for the next call. Each message moves
    once per call, however fast it comes back. A rejected message is removed
    only after its copy was confirmed, so a failure half-way loses nothing.
    """
    def replay(msg: Any, main: str, now: int) -> Outgoing:
        props = msg.properties
        headers = {k: v for k, v in (props.get("application_headers") or {}).items()
                   if k not in (settlement.REASON_HEADER, settlement.ERROR_HEADER)}
        body = msg.body.encode() if isinstance(msg.body, str) else msg.body
        return Outgoing(main, body, headers=headers or None,
                        message_id=props.get("message_id"),
                        content_type=props.get("content_type"))

    source = topology.rejected_queue_name(partition, queue)
    return _move(settings or config.get_settings(), partition, queue, source, replay)


def _move(settings: Settings, partition: str, queue: str, source: str,
          convert: Callable[[Any, str, int], Outgoing | None]) -> int:
    """Move the messages `source` holds now to the main queue, each as `convert` makes it.

    `convert(msg, main queue name, now in ms)` returns the message to
    publish, or None to leave that one where it is. Returns how many moved.
    """
    producer = broker.get_broker(settings)
    main = topology.queue_name(partition, queue)
    with producer.channel() as channel:
        # Bounded by the count at the start, so messages that come back
        # meanwhile (buried or rejected again, or left as invalid) cannot
        # keep the loop below going.
        remaining = channel.queue_declare(source, passive=True).message_count
    if remaining == 0:
        return 0
    producer.declare(settings, partition, queue)  # the main queue must exist
    moved = 0
    with producer.channel() as channel:
        while remaining > 0:
            batch = []
            for _ in range(min(_BATCH, remaining)):
                msg = channel.basic_get(source, no_ack=False)
                if msg is None:
                    break
                batch.append(msg)
            if not batch:
                break
            remaining -= len(batch)
            now = int(time.time() * 1000)
            items, tags = [], []
            for msg in batch:
                item = convert(msg, main, now)
                if item is None:
                    continue  # not acked: it goes back when the channel closes
                items.append(item)
                tags.append(msg.delivery_info["delivery_tag"])
            publish.publish_confirmed(channel, items, settings.confirm_timeout)
            for tag in tags:
                channel.basic_ack(tag)
            moved += len(items)
    return moved


def purge(partition: str, queue: str, *, settings: Settings | None = None) -> int:
    """Delete every job waiting in a queue, including those waiting to retry.

    Returns how many were deleted. Running jobs (unacked deliveries) and the
    buried and rejected queues are left alone. The queue keys of the deleted
    jobs are freed: each message is read (a batch at a time, with
    ``basic_get``), its key released, and only then deleted, so a failure
    half-way deletes nothing whose key is still taken. Messages that arrive
    while it runs may be left.
    """
    settings = settings or config.get_settings()
    names = [topology.queue_name(partition, queue)] + list(dict.fromkeys(  # levels may repeat
        topology.retry_queue_name(partition, queue, seconds) for seconds in settings.retry_levels
    ))
    total = 0
    for index, name in enumerate(names):
        try:
            total += _purge_queue(settings, partition, name)
        except QueueNotFound:
            if index == 0:
                raise  # the main queue itself is missing: say so
            # A retry queue that was never declared (other retry_levels).
    return total


def _purge_queue(settings: Settings, partition: str, name: str) -> int:
    """Delete the messages queue `name` holds now, freeing their queue keys first."""
    # Read rather than queue_purge: only the messages say which keys they hold.
    deleted = 0
    with broker.get_broker(settings).channel() as channel:
        # Bounded by the count at the start: a busy queue cannot keep it going.
        remaining = channel.queue_declare(name, passive=True).message_count
        while remaining > 0 and (batch := _get_batch(channel, name, min(_BATCH, remaining))):
            remaining -= len(batch)
            keys = [key for msg in batch if (key := message.queue_key_of(msg.body)) is not None]
            coordination.release_keys(settings, partition, keys)
            channel.basic_ack(batch[-1].delivery_info["delivery_tag"], multiple=True)
            deleted += len(batch)
    return deleted


def _get_batch(channel: amqp.Channel, name: str, limit: int) -> list[amqp.Message]:
    """Up to `limit` messages of queue `name`, unacked (closing the channel returns them)."""
    batch = []
    while len(batch) < limit and (msg := channel.basic_get(name, no_ack=False)) is not None:
        batch.append(msg)
    return batch
