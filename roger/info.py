"""Information, cluster-wide: partitions and running jobs on every live node,
and queued, buried or rejected jobs, looked at without consuming them.

`partitions()` and `running_jobs()` ask every live node through the system
exchange (see `roger.system`) and return within `timeout` (one second by
default), with an entry for each node that answered.

Messages are read with ``basic_get`` on a dedicated channel and never
acked; closing the channel puts them all back where they were (RabbitMQ
returns them to the head of the queue in their original order, for classic
and, as tested on 3.10, quorum queues). While a listing runs, those messages
are invisible to consumers, and afterwards they carry the `redelivered`
flag (quorum queues also count the delivery in ``x-delivery-count``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from roger import config, message
from roger.amqp import broker, topology
from roger.amqp.connection import QueueNotFound
from roger.errors import BadMessage, BrokerError
from roger.job import Job, UnregisteredJob
from roger.node import system
from roger.partition import coordination, settlement
from roger.partition.periodic import Schedule
from roger.partition.persister import load_persister
from roger.settings import Settings

__all__ = ["PeriodicInfo", "RejectedMessage", "buried_jobs", "nodes", "partitions", "periodic",
           "queue_depths",
           "queued_jobs", "rejected_jobs", "running_jobs"]

log = logging.getLogger(__name__)

# Characters of a rejected body that `rejected_jobs` shows: enough to tell
# what sent it, and a listing of 100 messages stays small.
BODY_TEXT_LIMIT = 500
# Seconds a listing waits for a quorum queue to take its messages back.
RETURN_WAIT = 2.0


@dataclass(frozen=True)
class RejectedMessage:
    """A message of a ``.rejected`` queue that is not a valid job, as `rejected_jobs` lists it.

    `body` is the raw body as text (bytes that are not UTF-8 shown as
    ``\\xNN`` escapes), cut to its first 500 characters; `size` is its
    length in bytes. `id` is the AMQP message id, when the sender set one.
    """

    id: str | None
    body: str
    size: int
    content_type: str | None
    rejected_reason: str | None
    rejected_error: str | None


def queued_jobs(
    partition: str, queue: str, limit: int = 100, *, settings: Settings | None = None,
    timeout: float = 1.0,
) -> list[Job]:
    """Up to `limit` jobs waiting in ``<partition>-<queue>``, oldest first.

    Waiting means not started: the messages in the queue, and before them
    the deliveries that consumers hold for a free worker (a prefetch above
    `max_workers`, see `prefetch_multiplier`), asked of every live node
    within `timeout` seconds. Jobs of classes not registered in this process
    come back as `roger.job.UnregisteredJob` records; undecodable messages
    are skipped.
    """
    settings = settings or config.get_settings()
    held = _held(settings, partition, queue, timeout) if limit > 0 else []
    return (held + _peek(settings, partition, queue, topology.queue_name(partition, queue),
                         limit - len(held)))[:max(limit, 0)]


def _held(settings: Settings, partition: str, queue: str, timeout: float) -> list[Job]:
    answers = system.gather(settings, "waiting_jobs", timeout, partition=partition,
                            queue=queue)
    jobs = []
    for node, records in answers.items():
        for record in records:
            try:
                jobs.append(message.decode(record.encode(), "application/json",
                                           partition=partition, queue=queue,
                                           fallback=UnregisteredJob))
            except BadMessage as exc:
                log.warning("node %s sent a waiting job that is not a job: %s", node, exc)
    return sorted(jobs, key=lambda job: job.queued_at or 0)


def buried_jobs(
    partition: str, queue: str, limit: int = 100, *, settings: Settings | None = None
) -> list[Job]:
    """Up to `limit` jobs in ``<partition>-<queue>.buried``, oldest first.

    Each record also has `buried_reason` and `buried_error` (the reason and
    error text it was buried with, or None).
    """
    name = topology.buried_queue_name(partition, queue)
    return _peek(settings, partition, queue, name, limit)


def rejected_jobs(
    partition: str, queue: str, limit: int = 100, *, settings: Settings | None = None
) -> list[Job | RejectedMessage]:
    """Up to `limit` messages in ``<partition>-<queue>.rejected``, oldest first.

    A message that decodes as a job (an unknown job name, a duplicate id,
    one over ``max_message_bytes``) comes back as its job record, a
    `roger.job.UnregisteredJob` when its class is not registered here; any
    other as a `RejectedMessage` with the start of its raw body. Each has
    `rejected_reason` and `rejected_error`: its ``x-roger-reason`` and
    ``x-roger-error`` headers (or None). `roger.replay_rejected` sends them
    back to the queue.
    """
    settings = settings or config.get_settings()
    name = topology.rejected_queue_name(partition, queue)
    out: list[Job | RejectedMessage] = []
    for msg in _browse(settings, name, limit):
        headers = msg.properties.get("application_headers") or {}
        reason = headers.get(settlement.REASON_HEADER)
        error = headers.get(settlement.ERROR_HEADER)
        try:
            job = _decode(msg, partition, queue)
        except BadMessage:
            out.append(_raw(msg, reason, error))
            continue
        job.rejected_reason, job.rejected_error = reason, error
        out.append(job)
    return out


def _raw(msg: Any, reason: str | None, error: str | None) -> RejectedMessage:
    body = msg.body
    if isinstance(body, str):  # py-amqp decodes bodies that name an encoding
        body = body.encode()
    text = body.decode("utf-8", errors="backslashreplace")
    if len(text) > BODY_TEXT_LIMIT:
        text = text[:BODY_TEXT_LIMIT] + "..."
    return RejectedMessage(msg.properties.get("message_id"), text, len(body),
                           msg.properties.get("content_type"), reason, error)


def _browse(settings: Settings, queue_name: str, limit: int) -> list[Any]:
    """Up to `limit` messages of a queue, left in it."""
    raw: list[Any] = []
    if limit <= 0:
        return raw
    with broker.get_broker(settings).channel() as channel:
        before = channel.queue_declare(queue_name, passive=True)
        while len(raw) < limit:
            msg = channel.basic_get(queue_name, no_ack=False)
            if msg is None:
                break
            raw.append(msg)
        # Leaving the block closes the channel: every message goes back.
    if raw and before.consumer_count == 0:
        _await_return(settings, queue_name, before.message_count)
    return raw


def _await_return(settings: Settings, queue_name: str, count: int) -> None:
    """Wait (bounded) until a queue nobody consumes holds its `count` messages again.

    A quorum queue takes back the messages of a closed channel a moment
    later, not before the close returns: an operation right after a listing
    (``retry_buried`` after ``buried_jobs``) would find the queue empty.
    Polling, because RabbitMQ tells no one when they are back.
    """
    deadline = time.monotonic() + RETURN_WAIT
    with broker.get_broker(settings).channel() as channel:
        while channel.queue_declare(queue_name, passive=True).message_count < count:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _decode(msg: Any, partition: str, queue: str) -> Job:
    return message.decode(
        msg.body,
        msg.properties.get("content_type"),
        partition=partition,
        queue=queue,
        redelivered=bool(msg.delivery_info.get("redelivered")),
        fallback=UnregisteredJob,
    )


def _peek(
    settings: Settings | None, partition: str, queue: str, queue_name: str, limit: int
) -> list[Job]:
    jobs = []
    for msg in _browse(settings or config.get_settings(), queue_name, limit):
        try:
            job = _decode(msg, partition, queue)
        except BadMessage as exc:
            log.warning("skipping a message of %s that is not a job: %s", queue_name, exc)
            continue
        headers = msg.properties.get("application_headers") or {}
        if queue_name.endswith(".buried"):
            job.buried_reason = headers.get(settlement.REASON_HEADER)
            job.buried_error = headers.get(settlement.ERROR_HEADER)
        jobs.append(job)
    return jobs


def partitions(*, settings: Settings | None = None, timeout: float = 1.0) -> dict[str, dict]:
    """What every live node serves.

    ``{node: {"running": {partition: {queue: {"max_workers", "paused",
    "message_count", "consumer_count", "delayed"}}}, "waiting": {partition: {queue:
    max_workers}}}}``. ``"delayed"`` counts the queue's delayed jobs that
    are not due yet, cluster-wide (the same on every node, as
    ``"message_count"``); cancelled ones count until they are due.
    """
    answers = system.gather(settings or config.get_settings(), "partitions", timeout)
    # The active coordinator's node knows the delayed counts: give them to all.
    delayed: dict[str, dict[str, int]] = {}
    for view in answers.values():
        for partition, queues in view.get("running", {}).items():
            for queue, counts in queues.items():
                if counts.get("delayed") is not None:
                    delayed.setdefault(partition, {})[queue] = counts["delayed"]
    for view in answers.values():
        for partition, queues in view.get("running", {}).items():
            for queue, counts in queues.items():
                counts["delayed"] = delayed.get(partition, {}).get(queue, 0)
    return answers


def running_jobs(partition: str | None = None, *, settings: Settings | None = None,
                 timeout: float = 1.0) -> dict[str, dict[str, list[Job]]]:
    """Jobs running now on every live node: ``{node: {partition: [job, ...]}}``.

    The jobs are records (instances of their `roger.Job` class) with
    `started_at` set.
    """
    settings = settings or config.get_settings()
    answers = system.gather(settings, "running_jobs", timeout, partition=partition)
    out: dict[str, dict[str, list[Job]]] = {}
    for node, by_partition in answers.items():
        out[node] = {}
        for name, records in by_partition.items():
            jobs = []
            for entry in records:
                try:
                    job = message.decode(entry["record"].encode(), "application/json",
                                         partition=name, queue=entry["queue"],
                                         fallback=UnregisteredJob)
                except BadMessage as exc:
                    log.warning("node %s sent a running job that is not a job: %s", node, exc)
                    continue
                job.started_at = entry["started_at"]
                jobs.append(job)
            out[node][name] = jobs
    return out


def nodes(*, settings: Settings | None = None, timeout: float = 1.0) -> dict[str, dict]:
    """Every live node's full status, as ``roger ctl status`` shows its own: ``{node: status}``.

    A status has ``"node"``, ``"pid"``, ``"running"`` (each partition with
    its pid, restarts, coordinator and queues: workers, paused, idle,
    running jobs with their records and ``started_at``) and ``"waiting"``.
    """
    return system.gather(settings or config.get_settings(), "status", timeout)


def queue_depths(partition: str, queue: str, *, settings: Settings | None = None
                 ) -> dict[str, int | None]:
    """Messages in a queue and its side queues now: ``{"ready", "buried", "rejected"}``.

    Counted by RabbitMQ (a passive declare, nothing read); a queue that was
    never declared counts None.
    """
    settings = settings or config.get_settings()
    names = {"ready": topology.queue_name(partition, queue),
             "buried": topology.buried_queue_name(partition, queue),
             "rejected": topology.rejected_queue_name(partition, queue)}
    out: dict[str, int | None] = {}
    remaining = list(names.items())
    while remaining:
        # One channel for all three, but a missing queue closes it: then the next.
        try:
            with broker.get_broker(settings).channel() as channel:
                while remaining:
                    state, name = remaining[0]
                    out[state] = channel.queue_declare(name, passive=True).message_count
                    remaining.pop(0)
        except QueueNotFound:
            out[remaining.pop(0)[0]] = None
    return out


class PeriodicInfo(dict):
    """One periodic entry as `periodic()` lists it: a dict whose keys also read as attributes.

    Keys: the entry's settings (`name`, `cron`, `job`, `args`, `partition`,
    `queue`, `timezone`), and `last_run` and `next_run`: aware datetimes in
    UTC (`last_run` is None until the entry first fired; `next_run` is None
    for an entry that never fires again).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def periodic(partition: str | None = None, *, settings: Settings | None = None,
             timeout: float = 1.0) -> list[PeriodicInfo]:
    """Every periodic entry of the cluster (or of `partition`), with its last and next run.

    The entries are those of the partition's active coordinator, which
    fires them; the partitions are those with entries in `settings` or on
    any live node (asked within `timeout` seconds). A partition that no
    coordinator serves is read from the persisted state with the entries
    of `settings`.
    """
    settings = settings or config.get_settings()
    names = {entry.partition for entry in settings.periodic}
    for parts in system.gather(settings, "periodic", timeout).values():
        names.update(parts)
    if partition is not None:
        names &= {partition}
    out = []
    for name in sorted(names):
        try:
            reply = coordination.request(settings, name, {"op": "periodic"},
                                         max(timeout, 2.0))
            entries = reply["entries"]
        except (BrokerError, KeyError) as e:
            log.info("no coordinator of %s answered (%s): reading its saved state", name, e)
            saved = load_persister(settings).load(name) or {}
            entries = Schedule(name, settings).listing(saved.get("periodic"), time.time())
        out.extend(PeriodicInfo(entry, last_run=_utc(entry.get("last_run")),
                                next_run=_utc(entry.get("next_run"))) for entry in entries)
    return out


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
