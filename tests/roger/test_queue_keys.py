"""SPEC 6: a queue_key is released when its job is buried, cancelled, purged or rejected,
and no key stays taken forever (`queue_key_ttl`).

Real nodes on the real RabbitMQ. Each test takes a key with a job, makes the
event happen and checks what a producer sees: a new job with the same key
can then be enqueued instead of raising `roger.DuplicateJob`.
"""

from __future__ import annotations

import pytest
from testjobs import Keyed, KeyedFail, Record

import roger
from roger import Node, Settings
from tests.helpers import wait_for
from tests.roger.support import delete_queues, queue_depth


def takes_key(partition: str, out: str, key: str = "k") -> bool:
    """Enqueue a job with `key`: True when the key was free (it is now taken)."""
    try:
        Keyed.create({"out": out, "qkey": key}).enqueue(partition)
    except roger.DuplicateJob:
        return False
    return True


def pause(node: Node, partition: str) -> None:
    """Pause the default queue and wait until this node knows (idle or not)."""
    roger.pause(partition, "default")

    def paused() -> bool:
        queue = node.status()["running"][partition]["queues"]["default"]
        return queue["paused"] is True and not queue["consuming"]

    wait_for(paused, what="the queue paused")


def depth(name: str) -> int:
    """Messages in queue `name`; 0 while it does not exist."""
    try:
        return queue_depth(name)
    except Exception:
        return 0


def test_a_buried_job_frees_its_key(make_settings, partition, out):
    with Node(make_settings(partitions={partition: {"default": 1}}, retry_levels=[1])):
        KeyedFail.create({"out": out, "qkey": "k"}).enqueue(partition)
        wait_for(lambda: roger.info.buried_jobs(partition, "default"), what="the job buried")
        wait_for(lambda: takes_key(partition, out), what="the key free")


def test_cancelling_a_job_in_a_paused_queue_frees_its_key_at_once(node, partition, out):
    pause(node, partition)
    job = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    assert not takes_key(partition, out)

    roger.cancel(partition, job.id)

    assert takes_key(partition, out)  # no wait: the job is still in its paused queue
    assert queue_depth(f"{partition}-default") == 2


def test_purge_frees_the_keys_of_the_jobs_it_deletes(make_settings, partition, out):
    retry_queue = f"{partition}-default.retry.60"
    settings = make_settings(partitions={partition: {"default": 1}}, retry_levels=[60])
    try:
        with Node(settings) as node:
            KeyedFail.create({"out": out, "qkey": "retrying"}).enqueue(partition)
            wait_for(lambda: depth(retry_queue) == 1, what="the job waiting to retry")
            pause(node, partition)
            Keyed.create({"out": out, "qkey": "queued"}).enqueue(partition)
            Record.create({"out": out}).enqueue(partition)
            assert not takes_key(partition, out, "retrying")
            assert not takes_key(partition, out, "queued")

            assert roger.purge(partition, "default") == 3

            assert takes_key(partition, out, "retrying") and takes_key(partition, out, "queued")
    finally:
        delete_queues([retry_queue])


def test_a_job_refused_before_publishing_keeps_no_key(node, partition, out):
    strict = Settings(**(node.settings.model_dump() | {"max_message_bytes": 200}))
    too_big = Keyed.create({"out": out, "qkey": "k", "pad": "x" * 200})
    with pytest.raises(ValueError, match="max_message_bytes"):
        roger.enqueue_many([too_big], partition, settings=strict)
    assert takes_key(partition, out)  # no wait: a claim comes after the release


def test_a_job_rejected_as_bad_input_frees_its_key(node, partition, out):
    class NotOnTheNode(Keyed):
        """Defined after the node forked: its workers reject it as an unknown job."""

    NotOnTheNode.create({"out": out, "qkey": "k"}).enqueue(partition)
    wait_for(lambda: queue_depth(f"{partition}-default.rejected") == 1, what="the rejection")
    wait_for(lambda: takes_key(partition, out), what="the key free")


@pytest.mark.parametrize("idle_after", [0, 1.0])
def test_a_key_whose_job_never_settles_is_freed_after_queue_key_ttl(make_settings, partition,
                                                                    out, idle_after):
    settings = make_settings(partitions={partition: {"default": 1}}, queue_key_ttl=1.0,
                             idle_after=idle_after)
    with Node(settings) as node:
        pause(node, partition)  # the job stays queued, its key taken
        Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
        wait_for(lambda: takes_key(partition, out), what="the key to expire")
        assert queue_depth(f"{partition}-default") == 2
