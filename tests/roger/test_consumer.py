"""Jobs from enqueue to settled, through a real node on the local RabbitMQ."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter

import kombu
import pytest
from testjobs import (
    Fail,
    Hang,
    Keyed,
    Record,
    RetryableWaitForKill,
    WaitForKill,
    events,
    read,
)

from roger import DuplicateJob, Node, admin, info, producer
from tests.helpers import wait_for
from tests.roger.support import BROKER, queue_depth


def test_jobs_run_once_each_in_worker_processes(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 2}})
    with Node(settings) as node:
        jobs = [Record.create({"out": out, "i": i}).enqueue(partition) for i in range(20)]
        wait_for(lambda: len(events(out, "end")) == 20, what="20 jobs done")
        consumer = node.status()["running"][partition]["queues"]["default"]
    ends = events(out, "end")
    assert Counter(e["id"] for e in ends) == Counter(j.id for j in jobs)
    assert {e["pid"] for e in ends} <= set(consumer["workers"])
    assert consumer["pid"] not in {e["pid"] for e in ends}  # never in the consumer
    assert queue_depth(f"{partition}-default") == 0


def test_enqueue_many_thousand_jobs_each_run_exactly_once(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 4}})
    jobs = [Record.create({"out": out, "i": i}) for i in range(1000)]
    producer.enqueue_many(jobs, partition)
    assert queue_depth(f"{partition}-default") == 1000
    with Node(settings):
        wait_for(lambda: len(events(out, "end")) >= 1000, timeout=60, what="1000 jobs")
    counts = Counter(e["id"] for e in events(out, "end"))
    assert set(counts) == {j.id for j in jobs}
    assert set(counts.values()) == {1}


def test_concurrency_reaches_but_never_exceeds_max_workers(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 3}})
    producer.enqueue_many([Record.create({"out": out, "sleep": 0.3}) for _ in range(12)],
                          partition)
    with Node(settings):
        wait_for(lambda: len(events(out, "end")) == 12, what="12 jobs")
    marks = sorted([(e["t"], 1) for e in events(out, "start")] +
                   [(e["t"], -1) for e in events(out, "end")], key=lambda m: (m[0], m[1]))
    running = peak = 0
    for _, delta in marks:
        running += delta
        peak = max(peak, running)
    assert peak == 3


def test_worker_killed_mid_job_settles_as_error_and_is_replaced(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings) as node:
        job = WaitForKill.create({"out": out}).enqueue(partition)
        pid = wait_for(lambda: events(out, "start"), what="job start")[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        errors = wait_for(lambda: events(out, "on_error"), what="on_error")
        assert errors[0]["id"] == job.id
        assert errors[0]["error"] == "WorkerCrashed"
        assert errors[0]["signal"] == "SIGKILL"
        # No traceback survives the worker: a line says what ended the job, and when.
        assert re.fullmatch(r"worker died with signal SIGKILL after \d+\.\d s",
                            errors[0]["traceback"])
        assert errors[0]["state"] is None  # before_run's state died with the worker
        # Not retryable: settled (acked) as an error, and the pool serves on.
        nxt = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: any(e["id"] == nxt.id for e in events(out, "end")), what="next job")
        workers = node.status()["running"][partition]["queues"]["default"]["workers"]
        assert pid not in workers
    assert queue_depth(f"{partition}-default") == 0


def test_retryable_job_whose_worker_is_killed_runs_again(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        job = RetryableWaitForKill.create({"out": out}).enqueue(partition)
        pid = wait_for(lambda: events(out, "start"), what="job start")[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        starts = wait_for(lambda: len(events(out, "start")) == 2 and events(out, "start"),
                          what="the retry")
    assert [s["retry_count"] for s in starts] == [0, 1]
    assert {s["id"] for s in starts} == {job.id}


@pytest.mark.parametrize("job_class", [Record, Keyed], ids=["plain", "with an execution key"])
def test_the_same_record_enqueued_twice_runs_twice_one_after_the_other(partition, make_settings,
                                                                      out, job_class):
    job = job_class.create({"out": out, "sleep": 0.5, "xkey": "a"})
    job.enqueue(partition)
    job.enqueue(partition)  # as a producer does after a BrokerError
    # Two workers, so both copies are delivered together and one could run beside the other.
    with Node(make_settings(partitions={partition: {"default": 2}})):
        wait_for(lambda: len(events(out, "end")) == 2, what="both runs")
    # Appended by the workers as they ran: the copy started after its twin ended.
    assert [(e["event"], e["id"]) for e in read(out)] == [
        ("start", job.id), ("end", job.id), ("start", job.id), ("end", job.id)]
    assert queue_depth(f"{partition}-default") == 0
    assert queue_depth(f"{partition}-default.rejected") == 0


def test_a_record_made_again_with_its_id_enqueues_again_without_a_clash(partition,
                                                                        make_settings, out):
    args = {"out": out, "qkey": "invoice-7"}
    # A node whose queue consumes nothing yet: its coordinator holds the keys.
    with Node(make_settings(partitions={partition: {"default": 0}})) as node:
        Keyed.create(args, id="invoice-7").enqueue(partition)
        # The producer restarted, not knowing whether that enqueue landed: it
        # makes the record again with the same id, and that is no clash ...
        Keyed.create(args, id="invoice-7").enqueue(partition)
        # ... while another job with the same queue_key is one.
        with pytest.raises(DuplicateJob):
            Keyed.create(args).enqueue(partition)
        node.reconfigure_partition(partition, {"default": 2})
        wait_for(lambda: len(events(out, "end")) == 2, what="both runs")
        # Settled, the key is free again.
        Keyed.create(args, id="invoice-8").enqueue(partition)
        wait_for(lambda: len(events(out, "end")) == 3, what="the next invoice")
    assert [(e["event"], e["id"]) for e in read(out)] == [
        ("start", "invoice-7"), ("end", "invoice-7"), ("start", "invoice-7"),
        ("end", "invoice-7"), ("start", "invoice-8"), ("end", "invoice-8")]


def test_bad_messages_are_moved_aside_and_the_next_job_runs(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}})
    with Node(settings), kombu.Connection(BROKER) as conn:
        producer_ = conn.Producer()
        queue = f"{partition}-default"
        producer_.publish(b"\x00\xffnot json", routing_key=queue,
                          content_type="application/json", content_encoding="binary")
        unknown = {"v": 1, "id": "x" * 32, "name": "nowhere:Nope", "args": {},
                   "queue_key": None, "execution_key": None, "retry_count": 0,
                   "queued_at": 0, "max_execution_time": None}
        producer_.publish(json.dumps(unknown).encode(), routing_key=queue,
                          content_type="application/json", content_encoding="binary")
        good = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="the good job")
        assert events(out, "end")[0]["id"] == good.id
        rejected = f"{partition}-default.rejected"
        wait_for(lambda: queue_depth(rejected) == 2, what="2 rejected")
        ch = conn.channel()
        reasons = []
        bodies = []
        for _ in range(2):
            msg = ch.basic_get(rejected, no_ack=True)
            reasons.append(msg.headers["x-roger-reason"])
            bodies.append(msg.body)
    assert reasons == ["undecodable", "unknown_job"]
    assert bodies[0] == b"\x00\xffnot json"  # kept byte for byte
    assert queue_depth(f"{partition}-default") == 0


def test_graceful_shutdown_lets_a_running_job_finish(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}}, shutdown_timeout=10)
    node = Node(settings).start()
    job = Record.create({"out": out, "sleep": 1.5}).enqueue(partition)
    wait_for(lambda: events(out, "start"), what="job start")
    assert node.stop() == 0
    assert [e["id"] for e in events(out, "end")] == [job.id]
    assert queue_depth(f"{partition}-default") == 0


def test_shutdown_timeout_kills_the_job_and_requeues_it(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}}, shutdown_timeout=0.5)
    node = Node(settings).start()
    Record.create({"out": out, "sleep": 30}).enqueue(partition)
    wait_for(lambda: events(out, "start"), what="job start")
    node.stop()
    assert events(out, "end") == []
    assert queue_depth(f"{partition}-default") == 1  # requeued, not lost


def test_max_execution_time_kills_and_settles_as_timeout(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        job = Hang.create({"out": out}).enqueue(partition)
        error = wait_for(lambda: events(out, "on_error"), what="on_error")[0]
    assert error["id"] == job.id
    assert error["error"] == "JobTimeout"
    assert error["message"] == "job ran longer than max_execution_time=0.5 s"
    ran_for = re.fullmatch(r"killed after (\d+\.\d) s: it ran longer than "
                           r"max_execution_time=0\.5 s", error["traceback"])
    assert ran_for and float(ran_for[1]) >= 0.5
    assert error["state"] is None
    assert queue_depth(f"{partition}-default") == 0


def test_retries_then_buried_then_retry_buried(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}}, retry_levels=[1],
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        job = Fail.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "on_buried"), what="on_buried")
        assert [e["retry_count"] for e in events(out, "start")] == [0, 1]
        assert [e["error"] for e in events(out, "on_error")] == ["ValueError", "ValueError"]
        assert "fail #1" in events(out, "on_error")[1]["traceback"]
        buried = wait_for(lambda: info.buried_jobs(partition, "default"), what="buried job")
        assert [b.id for b in buried] == [job.id]
        assert admin.retry_buried(partition, "default") == 1
        wait_for(lambda: len(events(out, "on_buried")) == 2, what="second burial")
    assert [e["retry_count"] for e in events(out, "start")] == [0, 1, 0, 1]


def test_a_constant_backoff_retries_at_each_level_then_buries(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}}, retry_levels=[1, 1],
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        job = Fail.create({"out": out}).enqueue(partition)
        buried = wait_for(lambda: info.buried_jobs(partition, "default"), what="buried job")
    assert [e["retry_count"] for e in events(out, "start")] == [0, 1, 2]
    assert [b.id for b in buried] == [job.id]
    assert len(events(out, "on_buried")) == 1


def test_callbacks_wrap_the_job_and_pass_state(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        job = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "after_run"), what="after_run")
    kinds = [e["event"] for e in read(out)]
    assert kinds == ["before_run", "start", "end", "after_run"]
    assert events(out, "after_run")[0]["state"] == {"token": job.id[:6]}


def test_a_failing_callback_never_breaks_the_job(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:BrokenCallbacks")
    with Node(settings):
        job = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="job end")
        wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="ack")
    assert events(out, "end")[0]["id"] == job.id


def test_workers_recycle_after_max_jobs_per_worker(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}}, max_jobs_per_worker=2)
    producer.enqueue_many([Record.create({"out": out}) for _ in range(6)], partition)
    with Node(settings):
        wait_for(lambda: len(events(out, "end")) == 6, what="6 jobs")
    pids = [e["pid"] for e in events(out, "end")]
    assert len(set(pids)) == 3
    assert all(pids.count(p) == 2 for p in set(pids))


def test_workers_start_lazily(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 4}})
    with Node(settings) as node:
        queue = node.status()["running"][partition]["queues"]["default"]
        assert queue["workers"] == []  # an idle queue holds no worker process
        Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="job end")
        queue = node.status()["running"][partition]["queues"]["default"]
        assert len(queue["workers"]) == 1


def test_worker_exiting_without_result_is_not_success(partition, make_settings, out):
    from testjobs import ExitHard

    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        ExitHard.create({"out": out, "code": 0}).enqueue(partition)
        ExitHard.create({"out": out, "signal": "SIGSEGV"}).enqueue(partition)
        errors = wait_for(lambda: len(events(out, "on_error")) == 2 and events(out, "on_error"),
                          what="two errors")
    assert [e["error"] for e in errors] == ["WorkerCrashed", "WorkerCrashed"]
    assert "code 0" in errors[0]["message"]
    assert errors[1]["signal"] == "SIGSEGV"
    assert re.fullmatch(r"worker exited with code 0 after \d+\.\d s", errors[0]["traceback"])
    assert re.fullmatch(r"worker died with signal SIGSEGV after \d+\.\d s",
                        errors[1]["traceback"])


def test_a_dead_worker_leaves_its_consumer_and_sibling_jobs_alone(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 2}})
    with Node(settings) as node:
        sibling = Record.create({"out": out, "sleep": 1.5}).enqueue(partition)
        victim = WaitForKill.create({"out": out}).enqueue(partition)
        starts = wait_for(lambda: len(events(out, "start")) == 2 and events(out, "start"),
                          what="both jobs started")
        consumer = node.status()["running"][partition]["queues"]["default"]["pid"]
        os.kill(next(s["pid"] for s in starts if s["id"] == victim.id), signal.SIGKILL)
        ends = wait_for(lambda: events(out, "end"), what="the sibling's end")
        # The sibling ran once, undisturbed: its consumer did not restart
        # (which would have killed its worker and requeued it).
        assert [(e["id"], e["redelivered"]) for e in ends] == [(sibling.id, False)]
        assert [s["id"] for s in events(out, "start")].count(sibling.id) == 1
        assert node.status()["running"][partition]["queues"]["default"]["pid"] == consumer
