"""Retries, burial and rejection: what happens to a job that did not succeed.

The backoff is `retry_levels` seconds: after its n-th failure a retryable
job waits ``retry_levels[n]`` seconds in ``<partition>-<queue>.retry.<s>``
(a queue whose TTL dead-letters it back to the main queue), then runs again
with `retry_count` n+1. After the last level it is buried.

The ``publish_*`` helpers are what a consumer calls to settle a delivery.
Each returns only once RabbitMQ confirmed the new message, so the consumer
may then ack the original: a crash in between duplicates a job, never
loses one. They take the consumer's own channel (dedicate one to them; see
`roger.broker.publish_confirmed`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import amqp

from roger import message
from roger.amqp import broker
from roger.amqp.broker import Outgoing, Unroutable
from roger.record import Record

if TYPE_CHECKING:
    from roger.settings import Settings

__all__ = [
    "ERROR_HEADER",
    "REASON_HEADER",
    "next_delay",
    "publish_buried",
    "publish_rejected",
    "publish_retry",
    "retry_or_bury",
]

REASON_HEADER = "x-roger-reason"
ERROR_HEADER = "x-roger-error"
BURIED_AT_HEADER = "x-roger-buried-at"
# Headers travel in one AMQP frame with the message properties: keep error
# texts (tracebacks can be huge) well below the frame size.
ERROR_TEXT_LIMIT = 4000
_TRUNCATED = "... [truncated]"


def next_delay(retry_count: int, levels: Sequence[int]) -> int | None:
    """Seconds to wait before the next attempt, or None: bury the job.

    `retry_count` is how many retries the job has had; a job that failed
    for the first time has 0 and waits ``levels[0]``.
    """
    if 0 <= retry_count < len(levels):
        return levels[retry_count]
    return None


def truncate(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """`text` cut to at most `limit` characters, marked when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_TRUNCATED), 0)] + _TRUNCATED


def publish_retry(channel: amqp.Channel, settings: Settings, job: Record, error_text: str) -> int:
    """Republish `job` with ``retry_count + 1`` to its next retry queue.

    Returns the delay in seconds. Raises `ValueError` when no retry level is
    left (use `retry_or_bury`, or `publish_buried`). `error_text` is not
    carried (the job's history belongs to callbacks and logs); it is kept
    in the signature so retry and bury are called alike.
    """
    partition, queue = _where(job)
    delay = next_delay(job.retry_count, settings.retry_levels)
    if delay is None:
        raise ValueError(
            f"job {job.id} has had {job.retry_count} retries, all of retry_levels: bury it"
        )
    retried = copy.copy(job)
    retried.retry_count = job.retry_count + 1
    item = Outgoing(
        broker.retry_queue_name(partition, queue, delay),
        message.encode(retried),
        message_id=job.id,
    )
    _publish(channel, settings, partition, queue, item)
    return delay


def publish_buried(
    channel: amqp.Channel, settings: Settings, job: Record, reason: str, error_text: str
) -> None:
    """Publish `job` to ``<partition>-<queue>.buried``, unchanged.

    Headers: ``x-roger-reason`` (`reason`, e.g. "error", "timeout"),
    ``x-roger-error`` (`error_text`, truncated) and ``x-roger-buried-at``
    (ms since the epoch). `roger.retry_buried` sends it back with
    `retry_count` 0.
    """
    partition, queue = _where(job)
    item = Outgoing(
        broker.buried_queue_name(partition, queue),
        message.encode(job),
        headers={
            REASON_HEADER: reason,
            ERROR_HEADER: truncate(error_text),
            BURIED_AT_HEADER: int(time.time() * 1000),
        },
        message_id=job.id,
    )
    _publish(channel, settings, partition, queue, item)


def publish_rejected(
    channel: amqp.Channel,
    settings: Settings,
    partition: str,
    queue: str,
    body: bytes,
    headers: dict[str, Any] | None,
    reason: str,
    *,
    detail: str | None = None,
    content_type: str | None = None,
    message_id: str | None = None,
) -> None:
    """Move a message that is not a valid job to ``<partition>-<queue>.rejected``.

    The body is copied byte for byte; the original headers are kept and
    ``x-roger-reason`` (a `BadMessage.reason`) added, plus ``x-roger-error``
    when `detail` is given. Pass the original `content_type` and
    `message_id` to keep them too.
    """
    new_headers = dict(headers or {})
    new_headers[REASON_HEADER] = reason
    if detail:
        new_headers[ERROR_HEADER] = truncate(detail)
    if isinstance(body, str):  # py-amqp decodes bodies that name an encoding
        body = body.encode()
    item = Outgoing(
        broker.rejected_queue_name(partition, queue),
        body,
        headers=new_headers,
        message_id=message_id,
        content_type=content_type,
    )
    _publish(channel, settings, partition, queue, item)


def retry_or_bury(
    channel: amqp.Channel, settings: Settings, job: Record, error_text: str, reason: str = "error"
) -> int | None:
    """Retry `job` if a retry level is left, else bury it.

    Returns the retry delay in seconds, or None when the job was buried
    (the consumer then fires ``on_buried``).
    """
    if next_delay(job.retry_count, settings.retry_levels) is None:
        publish_buried(channel, settings, job, reason, error_text)
        return None
    return publish_retry(channel, settings, job, error_text)


def _where(job: Record) -> tuple[str, str]:
    partition, queue = job.partition, job.queue
    if partition is None or queue is None:
        raise ValueError(f"job {job.id} has no partition/queue: set them when decoding it")
    return partition, queue


def _publish(
    channel: amqp.Channel, settings: Settings, partition: str, queue: str, item: Outgoing
) -> None:
    try:
        broker.publish_confirmed(channel, [item], settings.confirm_timeout)
    except Unroutable:
        # The queue was deleted under us: declare the family again, once.
        broker.declare_queues(channel, settings, partition, queue)
        broker.publish_confirmed(channel, [item], settings.confirm_timeout)
