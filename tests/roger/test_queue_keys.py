"""SPEC 6: a queue_key is released when its job is buried, cancelled, purged or rejected,
and no key stays taken forever (`queue_key_ttl`).

Real nodes on the real RabbitMQ. Each test takes a key with a job, makes the
event happen and checks what a producer sees: a new job with the same key
can then be enqueued instead of raising `roger.DuplicateJob`.
"""

from __future__ import annotations

import pytest
from testjobs import Keyed

import roger
from roger import Node
from tests.helpers import wait_for
from tests.roger.support import queue_depth


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


def test_cancelling_a_job_in_a_paused_queue_frees_its_key_at_once(node, partition, out):
    pause(node, partition)
    job = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    assert not takes_key(partition, out)

    roger.cancel(partition, job.id)

    assert takes_key(partition, out)  # no wait: the job is still in its paused queue
    assert queue_depth(f"{partition}-default") == 2


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
