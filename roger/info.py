"""Information, cluster-wide: partitions and running jobs on every live node,
and queued or buried jobs, looked at without consuming them.

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
from typing import Any

from roger import config, message
from roger.amqp import broker, topology
from roger.errors import BadMessage
from roger.job import Job, UnregisteredJob
from roger.node import system
from roger.partition import settlement
from roger.settings import Settings

__all__ = ["buried_jobs", "partitions", "queued_jobs", "running_jobs"]

log = logging.getLogger(__name__)


def queued_jobs(
    partition: str, queue: str, limit: int = 100, *, settings: Settings | None = None
) -> list[Job]:
    """Up to `limit` jobs waiting in ``<partition>-<queue>``, oldest first.

    Jobs of classes not registered in this process come back as
    `roger.job.UnregisteredJob` records; undecodable messages are skipped.
    """
    return _peek(settings, partition, queue, topology.queue_name(partition, queue), limit)


def buried_jobs(
    partition: str, queue: str, limit: int = 100, *, settings: Settings | None = None
) -> list[Job]:
    """Up to `limit` jobs in ``<partition>-<queue>.buried``, oldest first.

    Each record also has `buried_reason` and `buried_error` (the reason and
    error text it was buried with, or None).
    """
    name = topology.buried_queue_name(partition, queue)
    return _peek(settings, partition, queue, name, limit)


def _peek(
    settings: Settings | None, partition: str, queue: str, queue_name: str, limit: int
) -> list[Job]:
    if limit <= 0:
        return []
    settings = settings or config.get_settings()
    raw: list[Any] = []
    with broker.get_broker(settings).channel() as channel:
        while len(raw) < limit:
            msg = channel.basic_get(queue_name, no_ack=False)
            if msg is None:
                break
            raw.append(msg)
        # Leaving the block closes the channel: every message goes back.
    jobs = []
    for msg in raw:
        try:
            job = message.decode(
                msg.body,
                msg.properties.get("content_type"),
                partition=partition,
                queue=queue,
                redelivered=bool(msg.delivery_info.get("redelivered")),
                fallback=UnregisteredJob,
            )
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
    "message_count", "consumer_count"}}}, "waiting": {partition: {queue: max_workers}}}}``
    """
    return system.gather(settings or config.get_settings(), "partitions", timeout)


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
