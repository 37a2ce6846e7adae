"""Enqueueing: turn job records into confirmed messages on their queues.

Twins (the same job id queued more than once) never run side by side
(see `roger.partition.twin_locks`), and plain jobs pay nothing for it: the
first enqueue of a record with a random id goes out unmarked. Every other
copy carries the ``x-roger-twin`` header, and its consumer takes the id's
twin lock at the coordinator before running it:

- a record with a caller-chosen id (``create(args, id=...)``): any
  producer may publish that id at any time, so every copy is marked;
- a record enqueued again (after a `BrokerError`, or read back from
  `roger.info`): its first copy went out unmarked, so the producer first
  registers the id with the coordinator (one confirmed notice per batch,
  sent before the copies), which has the consumers that hold the first
  copy take the lock for it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from roger import config, message, registry
from roger.amqp import broker, topology
from roger.amqp import delay as levels
from roger.amqp.publish import Outgoing, Unroutable
from roger.due import delay_seconds, due_ms
from roger.partition import coordination
from roger.record import Record
from roger.settings import Settings, check_partition_name, check_queue_name

__all__ = ["enqueue_many"]

# Where jobs go instead of RabbitMQ while `roger.testing` runs them inline or
# captures them: called with (settings, partition, jobs, target queues) once
# the jobs passed the checks below. None in production.
divert: Callable[[Settings, str, list[Record], list[str]], None] | None = None


def enqueue_many(
    jobs: Iterable[Record],
    partition: str,
    queue: str | None = None,
    *,
    delay: Any = None,
    at: Any = None,
    settings: Settings | None = None,
) -> list[Record]:
    """Publish `jobs` to `partition` with one publisher-confirm round trip.

    Each job goes to `queue`, or to its own ``queue_type(args)`` when
    `queue` is None. Returns the jobs, each with `partition`, `queue` and
    `queued_at` set, once RabbitMQ confirmed all of them. On `BrokerError`
    some of the jobs may be queued: enqueueing the same records again is
    safe for at-least-once processing (they keep their ids). A job whose
    class no worker could resolve (see `roger.registry.check_addressable`)
    raises `TypeError` before anything is published.

    Delayed jobs: `delay` is seconds (int or float >= 0) or a `timedelta`;
    `at` a timezone-aware `datetime` or epoch seconds (in the past: now).
    The jobs wait in RabbitMQ (see `roger.amqp.delay`) and run no earlier
    than their due time, to the second; each record's `due_at` (ms since
    the epoch) says when. Their queue keys are held while they wait.
    Bad values raise `TypeError` / `ValueError` before anything happens.

    >>> roger.enqueue_many(jobs, "myapp", delay=timedelta(minutes=10))  # doctest: +SKIP
    """
    settings = settings or config.get_settings()
    jobs = list(jobs)
    check_partition_name(partition)
    now = time.time()  # queued_at, and what `delay` counts from
    due = due_ms(delay, at, now)
    targets: list[str] = []
    for job in jobs:
        if not isinstance(job, Record):
            raise TypeError(f"expected roger.Job records, got {type(job).__name__}")
        registry.check_addressable(job)
        target = queue if queue is not None else type(job).queue_type(job, job.args)
        targets.append(check_queue_name(target))
    if not jobs:
        return jobs
    if due is not None:
        seconds = delay_seconds(due, time.time())
        for target in dict.fromkeys(targets):  # a routing key too long says so now
            levels.route(settings, max(seconds, 1), topology.queue_name(partition, target))
    for job in jobs:
        job.due_at = due
    if divert is not None:
        divert(settings, partition, jobs, targets)
        return jobs

    # Test-and-set with the partition's coordinator: one round trip per
    # batch, and none at all when no job has a queue_key.
    coordination.claim_queue_keys(settings, partition, jobs, until=due)
    try:
        _publish(settings, partition, jobs, targets, now, due)
    except BaseException:
        coordination.release_queue_keys(settings, partition, jobs)
        raise
    return jobs


def encode_jobs(settings: Settings, jobs: list[Record], now: float | None = None
                ) -> list[bytes]:
    """The message bodies of `jobs`, stamped with `queued_at` `now` (epoch s, default now).

    Raises `ValueError` for a job whose body is over ``max_message_bytes``.
    """
    now = int((time.time() if now is None else now) * 1000)
    bodies = []
    for job in jobs:
        job.queued_at = now
        body = message.encode(job)
        if len(body) > settings.max_message_bytes:
            raise ValueError(
                f"{job!r} encodes to {len(body)} bytes, more than "
                f"max_message_bytes={settings.max_message_bytes}"
            )
        bodies.append(body)
    return bodies


def _publish(settings: Settings, partition: str, jobs: list[Record], targets: list[str],
             now: float, due: int | None) -> None:
    bodies = encode_jobs(settings, jobs, now)
    producer = broker.get_broker(settings)
    marks, again = twin_marks(jobs)
    delayed = due is not None and delay_seconds(due, time.time()) > 0
    _declare(producer, settings, partition, targets, delayed)
    if again:
        _register_twins(producer, settings, partition, again)
    # Counted after the declarations (the first ones take a while): the
    # wait starts when RabbitMQ takes the message.
    seconds = 0 if due is None else delay_seconds(due, time.time())
    items = []
    for job, target, body, mark in zip(jobs, targets, bodies, marks, strict=True):
        name = topology.queue_name(partition, target)
        if seconds:
            exchange, key = levels.route(settings, seconds, name)
            items.append(Outgoing(key, body, mark, message_id=job.id, exchange=exchange))
        else:
            items.append(Outgoing(name, body, mark, message_id=job.id))
    if seconds:
        assert due is not None
        # The coordinator counts delayed jobs by due time (`info.partitions`)
        # and keeps cancellations until the last is due: told in the same
        # confirmed batch, so no extra round trip.
        notice = {"op": "delayed", "due": due, "counts": Counter(targets)}
        items.append(Outgoing(topology.global_queue_name(partition), json.dumps(notice).encode()))

    timeout = settings.confirm_timeout
    try:
        producer.publish_many(items, timeout=timeout)
    except Unroutable as exc:
        # A queue was deleted since this process declared it: declare again.
        producer.forget_declared()
        _declare(producer, settings, partition, targets, delayed)
        producer.publish_many([items[i] for i in exc.indices], timeout=timeout)

    for job, target in zip(jobs, targets, strict=True):
        job.partition = partition
        job.queue = target


def _declare(producer: broker.Broker, settings: Settings, partition: str, targets: list[str],
             delayed: bool) -> None:
    for target in dict.fromkeys(targets):
        producer.declare(settings, partition, target)
        if delayed:
            producer.declare_delayed(settings, topology.queue_name(partition, target))
    if delayed:
        producer.declare_once(("global", partition),
                              lambda ch: topology.declare_global(ch, settings, partition))




def twin_marks(jobs: list[Record]) -> tuple[list[dict | None], list[str]]:
    """Each job's headers (the twin mark or None), and the ids to register first.

    A record's first enqueue with a random id is unmarked; from then on
    (whether that publish succeeded or not) the record is a copy.
    """
    marks: list[dict | None] = []
    again: list[str] = []
    for job in jobs:
        fields = job.__dict__
        kind = fields.get("_twin_id")
        if kind == "new":
            fields["_twin_id"] = "sent"
            marks.append(None)
            continue
        marks.append({topology.TWIN_HEADER: 1})
        if kind != "chosen":  # sent before, or read back: a first copy may be unmarked
            again.append(job.id)
    return marks, list(dict.fromkeys(again))


def _register_twins(producer: broker.Broker, settings: Settings, partition: str,
                    ids: list[str]) -> None:
    """Tell the coordinator these ids are enqueued again, before any copy is published.

    A persistent notice confirmed by RabbitMQ, as a queue key's release:
    no coordinator needs to be up, and it is in the coordinator's queue
    before any consumer can ask for a copy's lock.
    """
    producer.declare_once(("global", partition),
                          lambda ch: topology.declare_global(ch, settings, partition))
    producer.publish(topology.global_queue_name(partition),
                     json.dumps({"op": "twins", "ids": ids}).encode(),
                     timeout=settings.confirm_timeout)
