"""Enqueueing: turn job records into confirmed messages on their queues."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from roger import config, message, registry
from roger.amqp import broker, topology
from roger.amqp.publish import Outgoing, Unroutable
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
    """
    settings = settings or config.get_settings()
    jobs = list(jobs)
    check_partition_name(partition)
    targets: list[str] = []
    for job in jobs:
        if not isinstance(job, Record):
            raise TypeError(f"expected roger.Job records, got {type(job).__name__}")
        registry.check_addressable(job)
        target = queue if queue is not None else type(job).queue_type(job, job.args)
        targets.append(check_queue_name(target))
    if not jobs:
        return jobs
    if divert is not None:
        divert(settings, partition, jobs, targets)
        return jobs

    # Test-and-set with the partition's coordinator: one round trip per
    # batch, and none at all when no job has a queue_key.
    coordination.claim_queue_keys(settings, partition, jobs)
    try:
        _publish(settings, partition, jobs, targets)
    except BaseException:
        coordination.release_queue_keys(settings, partition, jobs)
        raise
    return jobs


def encode_jobs(settings: Settings, jobs: list[Record]) -> list[bytes]:
    """The message bodies of `jobs`, stamped with `queued_at` now.

    Raises `ValueError` for a job whose body is over ``max_message_bytes``.
    """
    now = int(time.time() * 1000)
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


def _publish(settings: Settings, partition: str, jobs: list[Record], targets: list[str]) -> None:
    items = [Outgoing(topology.queue_name(partition, target), body, message_id=job.id)
             for job, target, body in zip(jobs, targets, encode_jobs(settings, jobs),
                                          strict=True)]

    producer = broker.get_broker(settings)
    for target in dict.fromkeys(targets):
        producer.declare(settings, partition, target)
    timeout = settings.confirm_timeout
    try:
        producer.publish_many(items, timeout=timeout)
    except Unroutable as exc:
        # A queue was deleted since this process declared it: declare again.
        producer.forget_declared()
        for target in dict.fromkeys(targets):
            producer.declare(settings, partition, target)
        producer.publish_many([items[i] for i in exc.indices], timeout=timeout)

    for job, target in zip(jobs, targets, strict=True):
        job.partition = partition
        job.queue = target


