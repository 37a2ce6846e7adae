"""Twins (copies of one job id) run one after the other across consumers and nodes.

See `roger.partition.twin_locks`. The nodes here have one worker and a
prefetch of one each, so a copy that arrives while its twin runs on one
node is delivered to the other: only the twin lock keeps them apart.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import amqp
import kombu
import pytest
from testjobs import Fail, FirstSleeps, Record, events, read

import roger
from roger import Node
from roger.amqp import broker
from roger.errors import BrokerError
from roger.partition.twin_locks import PLACEHOLDER, TwinLocks
from tests.helpers import alive, wait_for
from tests.roger.support import BROKER

HEARTBEAT = 1.0  # short leases, so a dead holder's lock lapses soon
CONFIRM_TIMEOUT = 2.0  # with HEARTBEAT, a grace of 4 s: shorter than the first copies run


@pytest.fixture
def one_slot(make_settings, partition):
    """Settings for a node with one worker and a prefetch of one on `partition`."""
    def make(**fields):
        return make_settings(partitions={partition: {"default": 1}}, prefetch_multiplier=1,
                             heartbeat=HEARTBEAT, confirm_timeout=CONFIRM_TIMEOUT, **fields)
    return make


def runs(out: str, job_id: str) -> list[tuple[float, float]]:
    """(start, end) of each finished run of `job_id`, in start order.

    A worker runs one job at a time: a run's end is the next end its worker
    recorded after its start (a killed run has none).
    """
    started: dict[int, float] = {}
    spans = []
    for e in read(out):
        if e["id"] != job_id:
            continue
        if e["event"] == "start":
            started[e["pid"]] = e["t"]
        elif e["event"] == "end" and e["pid"] in started:
            spans.append((started.pop(e["pid"]), e["t"]))
    return sorted(spans)


def assert_one_after_the_other(spans: list[tuple[float, float]]) -> None:
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two copies overlapped: {spans}"


def twin_locks(*running: Node, partition: str) -> int:
    """Twin locks held at the partition's coordinator (the active one, on any node)."""
    return sum((n.status()["running"].get(partition, {}).get("coordinator") or {})
               .get("twin_locks", 0) for n in running)


# ---------------------------------------------------------------- the lock table


def test_a_lock_goes_to_its_waiters_in_order_and_lapses_when_its_holder_stops_renewing():
    locks = TwinLocks()
    assert locks.acquire("j", "a", 0.0, 3.0, claim=False, wait=("r", "1"))
    assert not locks.acquire("j", "b", 0.0, 3.0, claim=False, wait=("rb", "2"))
    assert not locks.acquire("j", "c", 0.0, 3.0, claim=False, wait=("rc", "3"))
    assert [g.token for g in locks.release("j", "a", 1.0, 3.0)] == ["b"]
    locks.renew([("j", "b")], 2.0, 3.0)
    assert locks.expire(4.0, 3.0) == ([], [])  # renewed at 2: good until 5
    grants, expired = locks.expire(5.0, 3.0)
    assert [g.token for g in grants] == ["c"] and expired == [("j", "b")]
    assert locks.release("j", "c", 6.0, 3.0) == [] and locks.locks == {}


def test_a_registered_id_is_held_for_its_first_copy_which_takes_it_over():
    locks = TwinLocks()
    assert locks.register("j", 0.0, grace=4.0, lease=3.0, forget=100.0, consumers=2) == []
    assert locks.locks["j"]["holder"] == PLACEHOLDER
    assert not locks.acquire("j", "copy", 1.0, 3.0, claim=False, wait=("r", "1"))
    assert locks.acquire("j", "first", 1.0, 3.0, claim=True, wait=None)
    assert locks.seen(["j"], "c1", 1.0, 3.0) == []  # answered after its claim: no effect
    assert locks.locks["j"]["holder"] == "first"
    assert [g.token for g in locks.release("j", "first", 2.0, 3.0)] == ["copy"]
    assert TwinLocks.from_dict(locks.to_dict()) == locks
    locks.forget(99.0)
    assert locks.known == {"j": 100.0}
    locks.forget(100.0)  # as long as a cancelled id: then it is a plain id again
    assert locks.known == {}


def test_a_placeholder_goes_once_every_consumer_counted_has_answered():
    locks = TwinLocks()
    locks.register("j", 0.0, grace=40.0, lease=3.0, forget=100.0, consumers=2)
    assert not locks.acquire("j", "copy", 1.0, 3.0, claim=False, wait=("r", "1"))
    assert locks.seen(["j"], "c1", 1.0, 3.0) == []
    assert locks.seen(["j"], "c1", 1.0, 3.0) == []  # one answer per consumer
    assert [g.token for g in locks.seen(["j"], "c2", 2.0, 3.0)] == ["copy"]


def test_no_placeholder_when_no_consumer_is_up_to_hold_a_first_copy():
    locks = TwinLocks()
    locks.register("j", 0.0, grace=40.0, lease=3.0, forget=100.0, consumers=0)
    assert locks.locks == {} and "j" in locks.known  # its later deliveries still take it
    assert locks.acquire("j", "copy", 1.0, 3.0, claim=False, wait=("r", "1"))


def test_a_placeholder_nobody_claims_lapses_after_the_grace():
    locks = TwinLocks()
    locks.register("j", 0.0, grace=4.0, lease=3.0, forget=100.0, consumers=1)
    assert not locks.acquire("j", "copy", 1.0, 3.0, claim=False, wait=("r", "1"))
    grants, _ = locks.expire(4.0, 3.0)
    assert [g.token for g in grants] == ["copy"]


def _get_all(queue: str) -> list[amqp.Message]:
    """Every message of `queue`, taken. By a consumer, not basic.get: `<p>.global` is a
    quorum queue with a single active consumer, which refuses basic.get."""
    with kombu.Connection(BROKER) as conn:
        ch = conn.default_channel
        try:
            count = ch.queue_declare(queue, passive=True).message_count
        except amqp.exceptions.NotFound:  # never declared: nothing was sent there
            return []
        got: list[amqp.Message] = []
        ch.basic_consume(queue, callback=got.append, no_ack=True)
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        return got


def _twin_mark(msg: amqp.Message) -> object:
    return (msg.properties.get("application_headers") or {}).get("x-roger-twin")


def test_only_copies_are_marked_and_only_records_enqueued_again_are_registered(
        partition, make_settings):
    make_settings()  # no node: what the producer publishes stays in the queues
    job = Record.create({"out": "-"})
    job.enqueue(partition)  # a plain job's first copy: no mark, no coordinator
    assert _get_all(f"{partition}.global") == []
    job.enqueue(partition)  # the same record again: registered, then marked
    Record.create({"out": "-"}, id="invoice-7").enqueue(partition)  # chosen: marked only
    notices = [json.loads(m.body) for m in _get_all(f"{partition}.global")]
    assert notices == [{"op": "twins", "ids": [job.id]}]
    copies = _get_all(f"{partition}-default")
    assert [(json.loads(m.body)["id"], _twin_mark(m)) for m in copies] == [
        (job.id, None), (job.id, 1), ("invoice-7", 1)]


# ---------------------------------------------------------------- real nodes


def test_the_same_record_enqueued_again_on_two_nodes_runs_after_its_twin(
        partition, one_slot, nodes, out, tmp_path):
    a, b = nodes(one_slot()), nodes(one_slot())
    job = FirstSleeps.create({"out": out, "flag": str(tmp_path / "flag"), "sleep": 8})
    job.enqueue(partition)
    first = wait_for(lambda: events(out, "start"), what="the first copy")[0]
    job.enqueue(partition)  # as a producer does after a BrokerError
    wait_for(lambda: len(events(out, "end")) == 2, timeout=60, what="both copies")
    assert_one_after_the_other(runs(out, job.id))
    # The copy went to the node whose worker was free, and waited there.
    assert {e["pid"] for e in events(out, "start")} != {first["pid"]}
    wait_for(lambda: twin_locks(a, b, partition=partition) == 0, what="the lock released")


def test_a_caller_chosen_id_enqueued_by_two_producers_never_overlaps(
        partition, one_slot, nodes, out):
    a, b = nodes(one_slot()), nodes(one_slot())
    job_id = f"invoice-{uuid.uuid4().hex[:8]}"
    # Two producers, each making the record from what it knows.
    Record.create({"out": out, "sleep": 1.5}, id=job_id).enqueue(partition)
    Record.create({"out": out, "sleep": 1.5}, id=job_id).enqueue(partition)
    wait_for(lambda: len(events(out, "end")) == 2, timeout=60, what="both copies")
    spans = runs(out, job_id)
    assert len(spans) == 2
    assert_one_after_the_other(spans)
    wait_for(lambda: twin_locks(a, b, partition=partition) == 0, what="the lock released")


def test_a_record_whose_first_enqueue_failed_runs_when_enqueued_again(
        partition, one_slot, nodes, out, monkeypatch):
    nodes(one_slot())
    job = Record.create({"out": out})
    real = broker.Broker.publish_many

    def lost_confirm(self, items, **kw):  # the broker never confirmed: nothing queued
        monkeypatch.setattr(broker.Broker, "publish_many", real)
        raise BrokerError("no confirm within 10 s")

    monkeypatch.setattr(broker.Broker, "publish_many", lost_confirm)
    with pytest.raises(BrokerError):
        job.enqueue(partition)
    job.enqueue(partition)  # the only copy: it waits out the grace, then runs
    wait_for(lambda: events(out, "end"), timeout=60, what="the copy")
    assert [e["id"] for e in events(out, "end")] == [job.id]


def test_a_first_copy_waiting_for_a_worker_takes_the_lock_before_its_copy(
        partition, one_slot, nodes, out, make_settings):
    # A grace shorter than `busy`: the copy would not wait for a first copy
    # that had not claimed the lock.
    a = nodes(make_settings(partitions={partition: {"default": 1}}, prefetch_multiplier=2,
                            heartbeat=HEARTBEAT, confirm_timeout=CONFIRM_TIMEOUT))
    busy = Record.create({"out": out, "sleep": 6}).enqueue(partition)
    wait_for(lambda: events(out, "start"), what="the job that keeps a busy")
    job = Record.create({"out": out, "sleep": 5})
    job.enqueue(partition)  # waits in a's backlog, unmarked, behind `busy`
    wait_for(lambda: job.id in str(a.status()["running"][partition]["queues"]["default"]
                                   ["waiting"]), what="the first copy waiting on a")
    nodes(one_slot())
    job.enqueue(partition)  # the copy: to the other node, whose worker is free
    wait_for(lambda: len(events(out, "end")) == 3, timeout=60, what="all three runs")
    assert_one_after_the_other(runs(out, job.id))
    assert len(runs(out, job.id)) == 2 and len(runs(out, busy.id)) == 1


def test_a_record_enqueued_again_after_its_run_does_not_wait_out_the_grace(
        partition, make_settings, nodes, out):
    # A grace of over two minutes: the copy runs because every consumer said
    # it does not hold the first copy, not because the grace ran out.
    for _ in range(2):
        nodes(make_settings(partitions={partition: {"default": 1}}, heartbeat=60))
    job = Record.create({"out": out})
    job.enqueue(partition)
    wait_for(lambda: events(out, "end"), what="the first run")
    job.enqueue(partition)
    wait_for(lambda: len(events(out, "end")) == 2, timeout=60, what="the second run")


def test_a_twin_runs_after_the_node_holding_the_lock_is_killed(
        partition, one_slot, nodes, out, tmp_path):
    a = nodes(one_slot())
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    args = {"out": out, "flag": str(tmp_path / "flag"), "sleep": 60}
    FirstSleeps.create(args, id=job_id).enqueue(partition)
    pid = wait_for(lambda: events(out, "start"), what="the first copy")[0]["pid"]
    b = nodes(one_slot())
    FirstSleeps.create(args, id=job_id).enqueue(partition)  # to b: a's one slot is taken
    os.kill(a.pid, signal.SIGKILL)
    a._handle.join(10)
    a._handle = a._api = None
    wait_for(lambda: not alive(pid), what="the killed node's worker to die")
    # The copy on b runs once the dead holder's lock lapses; then the first
    # copy, requeued by RabbitMQ, runs after it.
    wait_for(lambda: len(events(out, "end")) == 2, timeout=60, what="both copies on b")
    assert_one_after_the_other(runs(out, job_id))
    wait_for(lambda: twin_locks(b, partition=partition) == 0, what="the lock released")


def test_every_way_a_marked_copy_leaves_gives_its_lock_back(partition, one_slot, nodes, out,
                                                            tmp_path):
    node = nodes(one_slot(retry_levels=[0.5], shutdown_timeout=1))
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    # Fails, is retried (the retry keeps its mark), fails again and is buried.
    Fail.create({"out": out}, id=job_id).enqueue(partition)
    wait_for(lambda: len(events(out, "start")) == 2, what="the run and its retry")
    wait_for(lambda: twin_locks(node, partition=partition) == 0, what="released when buried")
    assert [_twin_mark(m) for m in _get_all(f"{partition}-default.buried")] == [1]
    # Done.
    Record.create({"out": out}, id=job_id).enqueue(partition)
    wait_for(lambda: events(out, "end"), what="the next copy")
    wait_for(lambda: twin_locks(node, partition=partition) == 0, what="released when done")
    # Cancelled while running (its worker is killed), then its id is
    # remembered as cancelled: the lock is free either way.
    Record.create({"out": out, "sleep": 30}, id=job_id + "c").enqueue(partition)
    wait_for(lambda: len(events(out, "start")) == 4, what="the long copy")
    roger.cancel(partition, job_id + "c")
    wait_for(lambda: twin_locks(node, partition=partition) == 0, what="released when cancelled")
    # Killed and handed back on shutdown (it outlives shutdown_timeout): the next node runs it.
    FirstSleeps.create({"out": out, "flag": str(tmp_path / "flag"), "sleep": 30},
                       id=job_id + "d").enqueue(partition)
    wait_for(lambda: len(events(out, "start")) == 5, what="the copy before shutdown")
    node.stop(timeout=15)
    again = nodes(one_slot())
    wait_for(lambda: [e for e in events(out, "end") if e["id"] == job_id + "d"],
             what="the job after the restart")
    wait_for(lambda: twin_locks(again, partition=partition) == 0, what="released")


def test_a_dormant_partition_still_runs_twins_one_after_the_other(
        partition, one_slot, nodes, out):
    a, b = nodes(one_slot(idle_after=0.5)), nodes(one_slot(idle_after=0.5))
    wait_for(lambda: all(n.status()["running"].get(partition, {}).get("idle") for n in (a, b)),
             what="the partition asleep on both nodes")
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    Record.create({"out": out, "sleep": 1.5}, id=job_id).enqueue(partition)
    Record.create({"out": out, "sleep": 1.5}, id=job_id).enqueue(partition)
    wait_for(lambda: len(events(out, "end")) == 2, timeout=60, what="both copies")
    assert_one_after_the_other(runs(out, job_id))
    assert len(read(out)) == 4
