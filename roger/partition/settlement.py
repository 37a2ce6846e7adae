"""Settling a delivery: republish it where it goes next, release its keys, then ack it.

The consumer calls `Settlement` once a job is done with: it ran (the worker
applied the settle policy and fired the callbacks), its worker died or was
killed (the consumer applies the policy here, in `lost`), it was cancelled,
or it was not a valid job (`reject`). In that order, each step waits for
the last to be confirmed:

1. a retried job is republished to ``<partition>-<queue>.retry.<s>`` (a
   queue whose TTL dead-letters it back to the main queue), a buried one to
   ``.buried``, a bad message to ``.rejected`` with its reason;
2. its queue key is released (not on retry: the key is held through
   retries; for a bad message, when its body names one), and its
   execution key if it held one;
3. the delivery is acked, in the next batch of acks (`flush`).

A crash between two steps runs a job again; it never loses one. The
``publish_*`` helpers take the consumer's settle channel (dedicate one to
them; see `roger.amqp.publish.publish_confirmed`).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import amqp

from roger import message
from roger.amqp import publish, topology
from roger.amqp.frames import AckBatcher
from roger.amqp.publish import Outgoing, Unroutable
from roger.callbacks import Callbacks
from roger.errors import BadMessage, JobTimeout, WorkerCrashed
from roger.metrics import Tally, outcome_of
from roger.partition.coordinator_link import CoordinatorLink
from roger.partition.policy import Outcome, decide, fire, next_delay
from roger.record import Record
from roger.settings import Settings
from supervision.events import signal_name

__all__ = [
    "ERROR_HEADER",
    "REASON_HEADER",
    "Settlement",
    "publish_buried",
    "publish_rejected",
    "publish_retry",
]

log = logging.getLogger("roger.consumer")

REASON_HEADER = "x-roger-reason"
ERROR_HEADER = "x-roger-error"
BURIED_AT_HEADER = "x-roger-buried-at"
# Headers travel in one AMQP frame with the message properties: keep error
# texts (tracebacks can be huge) well below the frame size.
ERROR_TEXT_LIMIT = 4000
_TRUNCATED = "... [truncated]"


class Settlement:
    """The consumer's settling side: one per consumer, on its connection."""

    def __init__(self, channel: amqp.Channel, settle_channel: amqp.Channel, settings: Settings,
                 partition: str, queue: str, coordinator: CoordinatorLink,
                 callbacks: Callbacks) -> None:
        self.channel = channel  # the consuming channel: acks and rejects go there
        self.settle_channel = settle_channel
        self.settings = settings
        self.partition, self.queue = partition, queue
        self.label = f"{partition}/{queue}"
        self.coordinator = coordinator
        self.callbacks = callbacks
        self.acks = AckBatcher()
        self.settled = 0
        self.tally: Tally | None = None  # counts settlements when metrics are on

    def __repr__(self) -> str:
        return (f"<Settlement {self.label}: {self.settled} settled, "
                f"{len(self.acks.outstanding)} unacked>")

    def delivered(self, tag: int) -> None:
        """A new delivery: it will be acked (or requeued) in tag order."""
        self.acks.delivered(tag)

    def settle(self, tag: int, job: Record, disposition: str, error_text: str | None = None,
               reason: str = "error", holds_exec_key: bool = False, *,
               ran_for: float | None = None, killed: str | None = None) -> None:
        """Settle delivery `tag` per `disposition` (see `roger.partition.policy`).

        `ran_for` is how long the job ran (None: it never started); `killed`
        is "timeout" or "crashed" when its worker was killed or died.
        """
        if disposition == "retry":
            publish_retry(self.settle_channel, self.settings, job, error_text or "")
        elif disposition == "bury":
            publish_buried(self.settle_channel, self.settings, job, reason, error_text or "")
        # Keys are released before the ack: a crash in between runs the job
        # again (at least once) rather than leaving a key taken forever.
        if job.queue_key is not None and disposition != "retry":
            self.coordinator.release_queue_key(job.queue_key, job.id)
        if holds_exec_key:
            self.coordinator.release_exec(job)
        self.acks.settled(tag)
        self.settled += 1
        if self.tally is not None:
            self.tally.count(job.name, outcome_of(disposition, killed), ran_for)

    def lost(self, tag: int, job: Record, outcome: Outcome, exitcode: int | None,
             holds_exec_key: bool, ran_for: float) -> None:
        """Settle a job whose worker was killed (timeout) or died (crashed) after `ran_for` s.

        No traceback survives the worker: callbacks get a line that says
        what killed the job and after how long, and a `state` of None.
        """
        if outcome == "timeout":
            why = f"ran longer than max_execution_time={job.max_execution_time:g} s"
            error: Exception = JobTimeout(f"job {why}")
            line = f"killed after {ran_for:.1f} s: it {why}"
        else:
            error = WorkerCrashed(exitcode if exitcode is not None and exitcode >= 0 else None,
                                  signal_name(exitcode))
            line = f"{error} after {ran_for:.1f} s"
        text = f"{type(error).__name__}: {line}"
        log.error("[%s] job %s (%s) failed: %s", self.label, job.id, job.name, text)
        decision = decide(job, outcome, self.settings.retry_levels)
        fire(self.callbacks, decision, self.partition, job, error=error, traceback=line)
        self.settle(tag, job, decision.disposition, text, decision.reason, holds_exec_key,
                    ran_for=ran_for, killed=outcome)

    def cancelled(self, tag: int, job: Record, ran_for: float | None = None) -> None:
        """Settle a cancelled job (skipped when dequeued, or killed after `ran_for` s)."""
        log.info("[%s] job %s (%s) cancelled", self.label, job.id, job.name)
        fire(self.callbacks, decide(job, "cancelled", self.settings.retry_levels),
             self.partition, job)
        # A cancelled job may hold its execution key without having run: the
        # coordinator handed it over when the job left the waiting queue.
        self.settle(tag, job, "cancelled", holds_exec_key=job.execution_key is not None,
                    ran_for=ran_for)

    def reject(self, tag: int, body: bytes, props: dict, error: BadMessage) -> None:
        """Move a message that is not a valid job aside, with its reason, and ack it."""
        log.error("[%s] message %s rejected (%s): %s", self.label, props.get("message_id", "?"),
                  error.reason, error)
        publish_rejected(self.settle_channel, self.settings, self.partition, self.queue,
                         body, props.get("application_headers") or {}, error.reason,
                         detail=error.detail or None, content_type=props.get("content_type"),
                         message_id=props.get("message_id"))
        self._release_key_of(body, error.reason)
        self.acks.settled(tag)
        if self.tally is not None:
            # Not a job: no job name (an unknown one would be a label an
            # outsider chooses, without bound).
            self.tally.count("", "rejected")

    def _release_key_of(self, body: bytes, reason: str) -> None:
        """Free the queue key a rejected message was enqueued with, when its body says."""
        # Not for duplicate_id: its twin runs here with the same job id and
        # key, and releases the key when it settles. Not for too_large: its
        # body is left unread, which is what the limit is for (the key goes
        # after queue_key_ttl).
        if reason in ("duplicate_id", "too_large"):
            return
        claimed = message.queue_key_of(body)
        if claimed is not None:
            self.coordinator.release_queue_key(*claimed)

    def ack(self, tag: int) -> None:
        """Ack a delivery that was handled without settling a job (parked elsewhere)."""
        self.acks.settled(tag)

    def requeue(self, tag: int) -> None:
        """Hand a delivery back to RabbitMQ (it was not ours to run after all)."""
        self.acks.forget(tag)
        try:
            self.channel.basic_reject(tag, requeue=True)
        except Exception:  # the connection is gone: the broker requeues anyway
            pass

    def flush(self) -> None:
        """Send the acks of this loop turn: one `multiple` ack per run of settled deliveries."""
        for tag, multiple in self.acks.flush():
            self.channel.basic_ack(tag, multiple=multiple)


def truncate(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """`text` cut to at most `limit` characters, marked when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_TRUNCATED), 0)] + _TRUNCATED


def publish_retry(channel: amqp.Channel, settings: Settings, job: Record, error_text: str
                  ) -> float:
    """Republish `job` with ``retry_count + 1`` to its next retry queue.

    Returns the delay in seconds. Raises `ValueError` when no retry level is
    left (bury it with `publish_buried`). `error_text` is not
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
        topology.retry_queue_name(partition, queue, delay),
        message.encode(retried),
        # A copy that took its twin lock keeps its mark: its twin may run
        # when it comes back (see roger.partition.twin_locks).
        headers={topology.TWIN_HEADER: 1} if job.__dict__.get("_twin") else None,
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
        topology.buried_queue_name(partition, queue),
        message.encode(job),
        headers={
            REASON_HEADER: reason,
            ERROR_HEADER: truncate(error_text),
            BURIED_AT_HEADER: int(time.time() * 1000),
            # A copy that took its twin lock keeps its mark (`retry_buried` too).
            **({topology.TWIN_HEADER: 1} if job.__dict__.get("_twin") else {}),
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
        topology.rejected_queue_name(partition, queue),
        body,
        headers=new_headers,
        message_id=message_id,
        content_type=content_type,
    )
    _publish(channel, settings, partition, queue, item)


def _where(job: Record) -> tuple[str, str]:
    partition, queue = job.partition, job.queue
    if partition is None or queue is None:
        raise ValueError(f"job {job.id} has no partition/queue: set them when decoding it")
    return partition, queue


def _publish(
    channel: amqp.Channel, settings: Settings, partition: str, queue: str, item: Outgoing
) -> None:
    try:
        publish.publish_confirmed(channel, [item], settings.confirm_timeout)
    except Unroutable:
        # The queue was deleted under us: declare the family again, once.
        topology.declare_queues(channel, settings, partition, queue)
        publish.publish_confirmed(channel, [item], settings.confirm_timeout)
