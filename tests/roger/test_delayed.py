"""SPEC 8, delayed jobs: ``enqueue(..., delay=..., at=...)`` waits in RabbitMQ, never runs early.

Real nodes on the real RabbitMQ, with delays of a few seconds. The module
has its own `system_exchange_prefix`, so its delay levels (28 queues shared
by its tests) are its own and are deleted at the end. Timing assertions are
one-sided ("not before due"); how soon after is the benchmark's business.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from testjobs import Keyed, Record, events, read

import roger
from roger import Node, testing
from roger.amqp import delay
from tests.helpers import wait_for
from tests.roger.support import delete_delay_levels, delete_queues, queue_depth

PREFIX = f"dly{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", autouse=True)
def delay_levels():
    yield
    delete_delay_levels(PREFIX)


@pytest.fixture
def settings(make_settings, partition):
    """Settings with this module's prefix; the partition's events exchange goes after."""
    def make(**fields):
        return make_settings(system_exchange_prefix=PREFIX, **fields)
    yield make
    delete_queues([], [f"{PREFIX}.{partition}.events"])


def started(out: str, job) -> dict | None:
    """The job's start record, once it started."""
    return next((e for e in events(out, "start") if e["id"] == job.id), None)


def ran_on_time(out: str, job) -> bool:
    """True once the job started; it must not have started before its due time."""
    start = started(out, job)
    if start is None:
        return False
    assert start["t"] * 1000 >= job.due_at, "a delayed job ran before its due time"
    return True


def test_a_delayed_job_runs_no_earlier_than_its_due_time(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1}})):
        job = Record.create({"out": out}).enqueue(partition, delay=2)
        assert job.due_at - job.queued_at in (2000, 2001)  # ms, rounded up
        wait_for(lambda: ran_on_time(out, job), what="the delayed job ran")


def test_delays_as_timedelta_and_at_as_datetime_or_epoch_seconds(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 2}})):
        soon = datetime.now(UTC) + timedelta(seconds=2)
        jobs = [Record.create({"out": out}).enqueue(partition, delay=timedelta(seconds=1.5)),
                Record.create({"out": out}).enqueue(partition, at=soon),
                Record.create({"out": out}).enqueue(partition, at=soon.timestamp())]
        assert jobs[1].due_at == jobs[2].due_at == math.floor(soon.timestamp() * 1000)
        wait_for(lambda: all(ran_on_time(out, job) for job in jobs), what="all three ran")


def test_a_job_due_in_the_past_runs_now(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1}})):
        job = Record.create({"out": out}).enqueue(
            partition, at=datetime.now(UTC) - timedelta(hours=1))
        assert job.due_at - job.queued_at in (0, 1)  # due at once (ms rounding), not an hour ago
        wait_for(lambda: started(out, job), what="the job ran")


def test_enqueue_many_delays_every_job(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 2}})):
        jobs = roger.enqueue_many([Record.create({"out": out}) for _ in range(5)],
                                  partition, delay=1)
        assert len({job.due_at for job in jobs}) == 1
        wait_for(lambda: all(ran_on_time(out, job) for job in jobs), what="all five ran")


def test_a_one_year_delay_is_accepted_and_kept_in_rabbitmq(settings, partition, out):
    settings()
    year = 365 * 24 * 3600
    job = Record.create({"out": out}).enqueue(partition, delay=year)

    assert job.due_at - job.queued_at in (year * 1000, year * 1000 + 1)
    # 31,536,000 s: its highest bit is 2**24, so it waits in level 24 first.
    level = delay.level_name(roger.config.get_settings(), year.bit_length() - 1)
    wait_for(lambda: queue_depth(level) == 1, what="the job in delay level 24")
    time.sleep(1)  # and it stays there: a huge TTL does not upset the queue
    assert queue_depth(level) == 1
    assert queue_depth(f"{partition}-default") == 0


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"delay": -1}, ValueError, ">= 0"),
    ({"delay": float("nan")}, ValueError, "finite"),
    ({"delay": "10m"}, TypeError, "timedelta"),
    ({"delay": True}, TypeError, "seconds"),
    ({"delay": timedelta(seconds=-5)}, ValueError, ">= 0"),
    ({"delay": 10 * 365 * 24 * 3600}, ValueError, "at most"),
    ({"at": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),  # noqa: DTZ001
    ({"at": "tomorrow"}, TypeError, "epoch seconds"),
    ({"at": float("inf")}, ValueError, "finite"),
    ({"delay": 5, "at": time.time() + 5}, ValueError, "not both"),
])
def test_bad_delay_and_at_values_raise_clear_errors(settings, partition, out, kwargs, error,
                                                    words):
    settings()
    job = Record.create({"out": out})
    with pytest.raises(error, match=words):
        job.enqueue(partition, **kwargs)
    with pytest.raises(error, match=words):
        roger.enqueue_many([job], partition, **kwargs)
    assert job.queued_at is None  # nothing was sent


def test_a_cancelled_delayed_job_never_runs_and_frees_its_key_at_once(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1}},
                       callbacks="testjobs:CancelCallbacks")):
        job = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition, delay=5)
        roger.cancel(partition, job.id)

        # Free at once: another job takes the key while the first still waits.
        Keyed.create({"out": out, "qkey": "k"}).enqueue(partition, delay=3)
        wait_for(lambda: len(events(out, "end")) == 1, what="the second job ran")
        wait_for(lambda: events(out, "on_cancel"), what="on_cancel of the first")
        assert not started(out, job)
        assert [e["id"] for e in events(out, "on_cancel")] == [job.id]


def test_a_delayed_job_holds_its_queue_key_while_it_waits(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1}})):
        job = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition, delay=2)
        with pytest.raises(roger.DuplicateJob):
            Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
        wait_for(lambda: ran_on_time(out, job), what="the delayed job ran")
        wait_for(lambda: _takes_key(partition, out), what="its key freed")


def _takes_key(partition: str, out: str) -> bool:
    try:
        Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
    except roger.DuplicateJob:
        return False
    return True


def test_delayed_counts_show_in_info_partitions(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1, "other": 1}})) as node:
        roger.enqueue_many([Record.create({"out": out}) for _ in range(3)], partition,
                           delay=3600)
        # Long enough to be seen waiting on a loaded machine, short enough to wait out.
        Record.create({"out": out}).enqueue(partition, "other", delay=8)

        def counts() -> dict:
            queues = roger.info.partitions()[node.settings.node_name]["running"][partition]
            return {q: info["delayed"] for q, info in queues.items()}

        wait_for(lambda: counts() == {"default": 3, "other": 1}, what="3 and 1 delayed")
        wait_for(lambda: counts() == {"default": 3, "other": 0}, what="the short one due")


def test_a_delayed_job_runs_after_a_node_restart(settings, partition, out):
    config = settings(partitions={partition: {"default": 1}})
    with Node(config):
        job = Record.create({"out": out}).enqueue(partition, delay=5)
    assert not read(out)  # the node stopped before the job was due
    # No node runs when it falls due: it waits in its queue for one.
    wait_for(lambda: queue_depth(f"{partition}-default") == 1, what="the job in its queue")
    with Node(config):
        wait_for(lambda: ran_on_time(out, job), what="the job ran on the new node")


def test_capture_records_the_due_time_and_inline_runs_at_once(partition, out):
    with testing.capture() as captured:
        job = Record.create({"out": out}).enqueue(partition, delay=60)
    [seen] = captured.jobs(partition)
    assert seen.due_at == job.due_at
    assert abs(job.due_at - job.queued_at - 60_000) <= 5  # ms
    with testing.inline():
        Record.create({"out": out}).enqueue(partition, delay=60)
    assert len(events(out, "end")) == 1


def test_a_delayed_job_wakes_its_idle_queue_and_is_counted_meanwhile(settings, partition, out):
    with Node(settings(partitions={partition: {"default": 1}}, idle_after=1)) as node:
        job = Record.create({"out": out}).enqueue(partition, delay=8)

        def delayed() -> int | None:
            queues = roger.info.partitions()[node.settings.node_name]["running"][partition]
            return queues["default"]["delayed"]

        assert node.status()["running"][partition].get("idle")  # dormant: no process
        wait_for(lambda: delayed() == 1, what="the job counted by the watcher's coordinator")
        wait_for(lambda: ran_on_time(out, job), what="the job woke its queue and ran")
