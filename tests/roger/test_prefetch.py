"""prefetch_multiplier (SPEC section 6): deliveries beyond the running jobs wait in
the consumer, in order; they are still queued from the user's point of view."""

from __future__ import annotations

import threading

from testjobs import Gated, Record, events

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


def _waiting(settings, workers: int = 1) -> int:
    """Deliveries a consumer of `workers` holds beyond its running jobs."""
    import math

    return math.ceil(workers * settings.prefetch_multiplier) - workers


def test_the_default_prefetch_holds_more_deliveries_than_workers(make_settings, partition, out):
    # The default is chosen by measurement (benchmarks/mixed.py); above 1 it
    # must keep the guarantees below with nothing set.
    settings = make_settings(partitions={partition: {"default": 1}})
    assert settings.prefetch_multiplier == roger.Settings.model_fields[
        "prefetch_multiplier"].default
    assert _waiting(settings) >= 2


def test_cancelling_a_job_waiting_in_the_consumer_skips_it_and_fires_on_cancel_once(
        make_settings, partition, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:CancelCallbacks")
    gate = out + ".gate"
    with Node(settings):
        first = Gated.create({"out": out, "gate": gate}).enqueue(partition)
        cancelled = Record.create({"out": out}).enqueue(partition)
        after = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "start"), what="the first job to start")
        # The other two are the consumer's now (prefetched), not RabbitMQ's.
        wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="the prefetch")
        assert cancelled.id in [j.id for j in roger.info.queued_jobs(partition, "default")]
        roger.cancel(partition, cancelled.id)
        # Skipped at once, while the first job still runs: not when it comes up.
        wait_for(lambda: events(out, "on_cancel"), what="on_cancel")
        assert cancelled.id not in [j.id for j in roger.info.queued_jobs(partition, "default")]
        open(gate, "w").close()
        wait_for(lambda: len(events(out, "end")) == 2, timeout=30, what="the other jobs")
    assert [e["id"] for e in events(out, "start")] == [first.id, after.id]
    assert [e["id"] for e in events(out, "on_cancel")] == [cancelled.id]
    assert queue_depth(f"{partition}-default") == 0


def test_stopping_a_node_hands_its_prefetched_jobs_back_and_loses_none(make_settings,
                                                                        partition, out):
    settings = make_settings(partitions={partition: {"default": 1}}, queue_type="classic")
    waiting = _waiting(settings)
    gate = out + ".gate"
    with Node(settings) as node:
        running = Gated.create({"out": out, "gate": gate}).enqueue(partition)
        rest = [Record.create({"out": out}).enqueue(partition) for _ in range(waiting + 2)]
        wait_for(lambda: events(out, "start"), what="the first job to start")
        wait_for(lambda: queue_depth(f"{partition}-default") == 2, what="the prefetch")
        assert [j.id for j in roger.info.queued_jobs(partition, "default")] == \
            [j.id for j in rest]
        # Stopping hands the waiting ones back at once, then waits for the running one.
        stopping = threading.Thread(target=node.stop)
        stopping.start()
        wait_for(lambda: queue_depth(f"{partition}-default") == len(rest), what="the hand-back")
        open(gate, "w").close()
        stopping.join(30)
    # The node stopped: the running job finished, every other one is back in RabbitMQ.
    assert [e["id"] for e in events(out, "end")] == [running.id]
    assert queue_depth(f"{partition}-default") == len(rest)
    assert [j.id for j in roger.info.queued_jobs(partition, "default")] == [j.id for j in rest]


def test_max_execution_time_of_a_prefetched_job_counts_from_its_start(make_settings, partition,
                                                                       out):
    from testjobs import Bounded

    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    assert _waiting(settings) >= 1
    with Node(settings):
        first = Record.create({"out": out, "sleep": 4.0}).enqueue(partition)
        # Delivered at once (prefetched), it waits longer than its 3 s limit for the worker.
        bounded = Bounded.create({"out": out}).enqueue(partition)
        wait_for(lambda: len(events(out, "end")) == 2, timeout=30, what="both jobs")
    assert [e["id"] for e in events(out, "end")] == [first.id, bounded.id]
    assert events(out, "on_error") == []
