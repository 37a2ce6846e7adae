"""The bad-input corpus: every case ends in a clear outcome and the consumer keeps serving."""

from __future__ import annotations

import json

import kombu
import pytest
from testjobs import CrashAlways, EatMemory, Raise, Record, events

import roger
from roger import Node
from tests.helpers import wait_for
from tests.roger.support import BROKER, queue_depth

VALID = {"v": 1, "id": "0" * 32, "name": "testjobs:Record", "args": {"out": "/dev/null"},
         "queue_key": None, "execution_key": None, "retry_count": 0, "queued_at": 0,
         "max_execution_time": None}

CORPUS = [
    # (what, body, content_type, expected x-roger-reason)
    ("garbage bytes", b"\x00\x01\x02garbage\xff", "application/json", "undecodable"),
    ("invalid UTF-8", b'{"v": 1, "id": "\xff\xfe"}', "application/json", "undecodable"),
    ("JSON of the wrong shape", b"[1, 2, 3]", "application/json", "invalid_fields"),
    ("a field of the wrong type", json.dumps(VALID | {"retry_count": "three"}).encode(),
     "application/json", "invalid_fields"),
    ("a pickle", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
     "application/x-python-serialize", "wrong_content_type"),
    ("plain text", b"hello", "text/plain", "wrong_content_type"),
    ("an unknown job name", json.dumps(VALID | {"name": "os:system"}).encode(),
     "application/json", "unknown_job"),
    ("a message over max_message_bytes",
     json.dumps(VALID | {"args": {"pad": "x" * 5000}}).encode(), "application/json",
     "too_large"),
]


def test_every_bad_message_is_moved_aside_with_its_reason(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 2}}, max_message_bytes=4096)
    with Node(settings), kombu.Connection(BROKER) as conn:
        producer = conn.Producer()
        for _, body, content_type, _ in CORPUS:
            producer.publish(body, routing_key=f"{partition}-default", content_type=content_type,
                             content_encoding="binary")
        good = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="the good job after the bad ones")
        rejected = f"{partition}-default.rejected"
        wait_for(lambda: queue_depth(rejected) == len(CORPUS), what="all rejected")
        channel = conn.channel()
        seen = []
        for _ in CORPUS:
            msg = channel.basic_get(rejected, no_ack=True)
            seen.append((msg.body, msg.headers["x-roger-reason"]))
    assert events(out, "end")[0]["id"] == good.id
    assert seen == [(body, reason) for _, body, _, reason in CORPUS]  # byte for byte
    assert queue_depth(f"{partition}-default") == 0


def test_args_that_are_not_json_fail_at_create():
    with pytest.raises(TypeError, match="set"):
        Record.create({"out": "/dev/null", "items": {1, 2}})


@pytest.mark.parametrize("exc", ["SystemExit", "KeyboardInterrupt", "BaseException",
                                 "MemoryError"])
def test_a_job_raising_anything_is_a_job_error(partition, make_settings, out, exc):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings) as node:
        Raise.create({"out": out, "raise": exc}).enqueue(partition)
        after = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="the next job")
        worker_pids = node.status()["running"][partition]["queues"]["default"]["workers"]
    assert [e["error"] for e in events(out, "on_error")] == [exc]
    assert events(out, "end")[0]["id"] == after.id
    # The worker survived its job's exception and ran the next job too.
    assert events(out, "start")[0]["pid"] == events(out, "end")[0]["pid"] in worker_pids


def test_a_job_exhausting_memory_under_rlimit_as(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:Callbacks")
    with Node(settings):
        EatMemory.create({"out": out}).enqueue(partition)
        Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: events(out, "end"), what="the next job")
    assert [e["error"] for e in events(out, "on_error")] in (["MemoryError"],
                                                             ["WorkerCrashed"])


def test_poison_message_is_buried_and_its_neighbours_run(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 2}}, retry_levels=[1],
                             callbacks="testjobs:Callbacks")
    poison = CrashAlways.create({"out": out})
    neighbours = [Record.create({"out": out}) for _ in range(6)]
    roger.enqueue_many([neighbours[0], poison, *neighbours[1:]], partition)
    with Node(settings):
        wait_for(lambda: events(out, "on_buried"), what="poison buried")
        wait_for(lambda: len(events(out, "end")) == 6, what="the neighbours")
        buried = roger.info.buried_jobs(partition, "default")
    assert [b.id for b in buried] == [poison.id]
    assert buried[0].buried_reason == "worker_crashed"
    assert sorted(e["id"] for e in events(out, "end")) == sorted(j.id for j in neighbours)

