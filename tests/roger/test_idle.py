"""Idle queues (SPEC section 8): a queue with no message for `idle_after` seconds gives
back its consumer, its workers and its connection, and wakes when a job comes.

Real nodes, a real RabbitMQ: the watcher consumes idle queues, hosts idle
partitions' coordinators, and the root starts what a message wakes.
"""

from __future__ import annotations

import random
import time

import kombu
import pytest
from testjobs import Keyed, Record, ends, events

import roger
from roger import Node
from tests.helpers import alive, wait_for
from tests.roger.support import BROKER, delete_partition, queue_depth

IDLE_AFTER = 1.0


def queue_status(node: Node, partition: str, queue: str = "default") -> dict:
    return node.status()["running"][partition]["queues"][queue]


def dormant(node: Node, partition: str) -> dict | None:
    """The partition's status entry while it has no process at all, else None."""
    entry = node.status()["running"].get(partition, {})
    return entry if entry.get("idle") and entry.get("pid") is None else None


@pytest.fixture
def idle_node(make_settings, partition):
    settings = make_settings(partitions={partition: {"default": 1, "other": 1}},
                             idle_after=IDLE_AFTER, callbacks="testjobs:CancelCallbacks")
    with Node(settings) as node:
        yield node


def test_a_node_starts_with_its_queues_idle_and_a_job_wakes_them(idle_node, partition, out):
    entry = dormant(idle_node, partition)
    assert entry is not None, "a fresh node keeps its partitions asleep"
    queue = entry["queues"]["default"]
    assert queue["idle"] and not queue["consuming"] and queue["pid"] is None
    assert queue["consumer_count"] == 1  # the watcher
    assert queue["paused"] is False and queue["max_workers"] == 1

    Record.create({"out": out}).enqueue(partition)
    wait_for(lambda: ends(out), what="the job to run")
    awake = queue_status(idle_node, partition)
    assert awake["consuming"] and awake["pid"] is not None and not awake.get("idle")
    assert queue_status(idle_node, partition, "other")["idle"]  # only what had work woke

    # Nothing more comes: the queue, then the whole partition, fall asleep.
    entry = wait_for(lambda: dormant(idle_node, partition), timeout=10 * IDLE_AFTER,
                     what="the partition to fall idle again")
    assert not alive(awake["pid"])
    assert entry["coordinator"]["queue_keys"] == 0  # hosted by the watcher meanwhile


def test_every_job_runs_once_while_the_queue_keeps_falling_idle_and_waking(
        make_settings, partition, out):
    # Jobs come about as often as the queue falls idle: some land just as
    # the consumer cancels, some while the watcher takes over, some after.
    settings = make_settings(partitions={partition: {"default": 2}}, idle_after=0.3)
    rng = random.Random(7)
    with Node(settings):
        jobs = []
        for _ in range(40):
            jobs.append(Record.create({"out": out}).enqueue(partition))
            time.sleep(rng.uniform(0.15, 0.6))
        done = wait_for(lambda: len(ends(out)) >= len(jobs) and ends(out), timeout=60,
                        what="every job")
    assert sorted(e["id"] for e in done) == sorted(j.id for j in jobs)
    workers = {e["pid"] for e in done}
    assert len(workers) > 2, "the queue fell idle and woke several times"
    assert queue_depth(f"{partition}-default") == 0


def test_pause_while_idle_holds_jobs_until_resume(idle_node, partition, out):
    roger.pause(partition, "default")
    wait_for(lambda: dormant(idle_node, partition)["queues"]["default"]["paused"],
             what="the watcher to see the pause")
    job = Record.create({"out": out}).enqueue(partition)
    time.sleep(3 * IDLE_AFTER)
    assert events(out, "start") == [] and queue_depth(f"{partition}-default") == 1
    assert dormant(idle_node, partition) is not None  # nothing woke for a paused queue

    roger.resume(partition, "default")
    assert [e["id"] for e in wait_for(lambda: ends(out), what="the job after resume")] \
        == [job.id]


def test_a_job_cancelled_in_an_idle_queue_never_runs(idle_node, partition, out):
    roger.pause(partition, "default")
    wait_for(lambda: dormant(idle_node, partition)["queues"]["default"]["paused"],
             what="the watcher to see the pause")
    job = Record.create({"out": out}).enqueue(partition)
    roger.cancel(partition, job.id)  # answered by the watcher's coordinator
    roger.resume(partition, "default")
    cancels = wait_for(lambda: events(out, "on_cancel"), what="on_cancel")
    wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="the ack")
    assert [c["id"] for c in cancels] == [job.id]
    assert events(out, "start") == []


def test_queue_keys_on_a_dormant_partition_are_claimed_and_released(idle_node, partition,
                                                                     out):
    assert dormant(idle_node, partition) is not None
    first = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    with pytest.raises(roger.DuplicateJob):
        Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    wait_for(lambda: ends(out), what="the keyed job")
    # Released when it finished: the key can be taken again.
    wait_for(lambda: _claims(partition, out), what="the key to be free again")
    assert ends(out)[0]["id"] == first.id


def _claims(partition: str, out: str) -> bool:
    try:
        Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    except roger.DuplicateJob:
        return False
    return True


def test_reconfigure_and_restart_while_idle(idle_node, partition, out):
    status = idle_node.reconfigure_partition(partition, {"default": 2, "q1": 1})
    entry = status["running"][partition]
    assert entry["idle"] and set(entry["queues"]) == {"default", "q1"}
    assert entry["queues"]["default"]["max_workers"] == 2 and entry["queues"]["q1"]["idle"]

    Record.create({"out": out}).enqueue(partition, queue="q1")
    wait_for(lambda: ends(out), what="a job on the queue added while idle")

    wait_for(lambda: dormant(idle_node, partition), timeout=10 * IDLE_AFTER, what="idle again")
    status = idle_node.restart_partition(partition)
    entry = status["running"][partition]
    assert entry["pid"] is not None and entry["queues"]["default"]["consuming"]
    assert entry["queues"]["default"]["max_workers"] == 2
    Record.create({"out": out}).enqueue(partition)
    wait_for(lambda: len(ends(out)) == 2, what="a job after the restart")


def test_info_lists_idle_queues_like_any_other(idle_node, partition):
    view = roger.info.partitions()[idle_node.settings.node_name]
    queue = view["running"][partition]["default"]
    assert queue == {"max_workers": 1, "paused": False, "message_count": 0,
                     "consumer_count": 1, "delayed": 0}


def test_an_idle_queue_deleted_under_the_watcher_is_declared_again(idle_node, partition, out):
    with kombu.Connection(BROKER) as conn:
        conn.channel().queue_delete(f"{partition}-default")
    wait_for(lambda: queue_status(idle_node, partition).get("consumer_count") == 1,
             what="the watcher to declare and consume the queue again")
    Record.create({"out": out}).enqueue(partition)
    wait_for(lambda: ends(out), what="the job to run")


def test_a_burst_of_jobs_wakes_many_dormant_partitions_together(make_settings, partition, out):
    # The root starts partitions woken at the same time side by side; two
    # queues of one partition may wake in the same batch.
    names = [partition] + [f"{partition}b{i}" for i in range(5)]
    settings = make_settings(partitions={n: {"default": 1, "other": 1} for n in names},
                             idle_after=IDLE_AFTER)
    try:
        with Node(settings) as node:
            wait_for(lambda: all(dormant(node, n) for n in names), what="every partition asleep")
            jobs = [Record.create({"out": out}).enqueue(n, queue=q)
                    for n in names for q in ("default", "other")]
            done = wait_for(lambda: len(ends(out)) >= len(jobs) and ends(out), timeout=60,
                            what="every job")
            assert sorted(e["id"] for e in done) == sorted(j.id for j in jobs)
            assert node.status()["waiting"] == {}
    finally:
        for n in names[1:]:
            delete_partition(n)
