"""prefetch_multiplier (SPEC section 6): deliveries beyond the running jobs wait in
the consumer, in order; they are still queued from the user's point of view."""

from __future__ import annotations

from testjobs import Record, events

import roger
from roger import Node
from tests.helpers import wait_for
from tests.roger.support import queue_depth


def test_prefetched_jobs_wait_in_order_and_are_listed_as_queued(make_settings, partition,
                                                                  out):
    # Classic: RabbitMQ 3.10 puts a delivery handed back to a quorum queue at its
    # tail, so only a classic queue keeps the order across the pause below.
    settings = make_settings(partitions={partition: {"default": 1}}, prefetch_multiplier=3,
                             queue_type="classic")
    gate = f"{out}.gate"  # the first job runs until the test opens it
    with Node(settings):
        jobs = [Record.create({"out": out, "i": i, **({"until": gate} if i == 0 else {})}
                              ).enqueue(partition)
                for i in range(5)]
        wait_for(lambda: events(out, "start"), what="the first job to start")
        # One runs, two wait in the consumer (prefetch 3), two in the queue.
        wait_for(lambda: queue_depth(f"{partition}-default") == 2, what="the prefetch")
        queued = roger.info.queued_jobs(partition, "default")
        assert [j.id for j in queued] == [j.id for j in jobs[1:]]

        # Pausing hands the waiting ones back to RabbitMQ, in order.
        roger.pause(partition, "default")
        wait_for(lambda: queue_depth(f"{partition}-default") == 4, what="the hand-back")
        assert [j.id for j in roger.info.queued_jobs(partition, "default")] == \
            [j.id for j in jobs[1:]]
        roger.resume(partition, "default")
        open(gate, "w").close()
        wait_for(lambda: len(events(out, "end")) == 5, timeout=30, what="every job")
    assert [e["id"] for e in events(out, "start")] == [j.id for j in jobs]


def test_the_prefetch_multiplier_must_be_at_least_one():
    import pytest
    with pytest.raises(ValueError, match="prefetch_multiplier"):
        roger.Settings(prefetch_multiplier=0.5, _config_file=None)
