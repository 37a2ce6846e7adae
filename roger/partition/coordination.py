"""Asking a partition's coordinator: queue keys, cancellation, pause and resume.

These are the cluster-wide operations: whichever node's coordinator is
active for the partition answers (see `roger.partition.coordinator`). Plain jobs
(no keys) never come here.
"""

from __future__ import annotations

import json

from roger import config
from roger.amqp import broker, rpc
from roger.amqp.topology import declare_global, global_queue_name
from roger.errors import BrokerError, DuplicateJob
from roger.record import Record
from roger.settings import Settings, check_partition_name, check_queue_name

__all__ = ["cancel", "pause", "resume"]


def request(settings: Settings, partition: str, body: dict, timeout: float | None = None
            ) -> dict:
    """One call to the partition's active coordinator; raises BrokerError when none answers."""
    with broker.get_broker(settings).channel() as channel:
        declare_global(channel, settings, partition)
        reply = rpc.call(channel, global_queue_name(partition), body,
                         timeout or settings.confirm_timeout)
    return reply


def _checked(settings: Settings, partition: str, body: dict) -> dict:
    reply = request(settings, partition, body)
    if not reply.get("ok"):
        raise BrokerError(f"coordinator of {partition!r} refused {body['op']}: "
                          f"{reply.get('error', reply)}")
    return reply


def claim_queue_keys(settings: Settings, partition: str, jobs: list[Record],
                     until: int | None = None) -> None:
    """Reserve each job's `queue_key` cluster-wide, all or none; `DuplicateJob` on a clash.

    `until` is the jobs' due time (ms since the epoch) when they are
    delayed: `queue_key_ttl` then counts from it, so a key outlives its
    job's wait however long.
    """
    pairs = [(job.queue_key, job.id) for job in jobs if job.queue_key is not None]
    if not pairs:
        return
    body: dict = {"op": "claim", "keys": pairs}
    if until is not None:
        body["until"] = until / 1000
    reply = request(settings, partition, body)
    if not reply.get("ok"):
        if "duplicates" in reply:
            raise duplicate_job(partition, reply["duplicates"])
        raise BrokerError(f"coordinator of {partition!r} refused the claim: {reply}")


def duplicate_job(partition: str, keys: list[str]) -> DuplicateJob:
    """The error for a claim that found `keys` held by other jobs."""
    return DuplicateJob(f"partition {partition!r}: a job with queue_key "
                        f"{', '.join(map(repr, keys))} is already queued or running")


def release_queue_keys(settings: Settings, partition: str, jobs: list[Record]) -> None:
    """Give keys back (after a claim whose publish failed)."""
    release_keys(settings, partition,
                 [(job.queue_key, job.id) for job in jobs if job.queue_key is not None])


def release_keys(settings: Settings, partition: str, pairs: list[tuple[str, str]]) -> None:
    """Free each ``(queue_key, job_id)`` whose job still holds the key.

    One persistent notice, confirmed by RabbitMQ, as consumers release keys:
    the coordinator applies it in order with every request, so a claim sent
    after this returns finds the keys free; and no coordinator needs to be
    up meanwhile (a purge of a partition no node serves).
    """
    if not pairs:
        return
    producer = broker.get_broker(settings)
    with producer.channel() as channel:
        declare_global(channel, settings, partition)
    producer.publish(global_queue_name(partition),
                     json.dumps({"op": "release", "keys": pairs}).encode(),
                     timeout=settings.confirm_timeout)


def cancel(partition: str, job_id: str, *, settings: Settings | None = None) -> None:
    """Cancel a job wherever it is: skipped when dequeued, or its worker killed if running.

    ``on_cancel`` fires exactly once, on the node that finds the job. Its
    `queue_key` is free at once, even while the job waits in a paused queue.
    Cancelling a job that already finished does nothing. The cancellation is
    remembered for 24 hours (a job still queued after that runs), and in a
    partition with delayed jobs until the last of them is due: a cancelled
    delayed job never runs, and its ``on_cancel`` fires when it is due.

    >>> roger.cancel("myapp", job.id)
    """
    settings = settings or config.get_settings()
    check_partition_name(partition)
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    _checked(settings, partition, {"op": "cancel", "job_id": job_id})


def pause(partition: str, queue: str, *, settings: Settings | None = None) -> None:
    """Stop consuming `queue` of `partition` on every node, until `resume`.

    Running jobs finish. The pause survives partition restarts,
    reconfiguration and restarts of every node.
    """
    _pause_or_resume("pause", partition, queue, settings)


def resume(partition: str, queue: str, *, settings: Settings | None = None) -> None:
    """Consume `queue` of `partition` again on every node."""
    _pause_or_resume("resume", partition, queue, settings)


def _pause_or_resume(op: str, partition: str, queue: str, settings: Settings | None) -> None:
    settings = settings or config.get_settings()
    check_partition_name(partition)
    check_queue_name(queue)
    _checked(settings, partition, {"op": op, "queue": queue})
