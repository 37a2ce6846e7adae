"""`.rejected` is no dead end: list what was rejected and why, replay it once it is fixed."""

from __future__ import annotations

import json

import kombu
from testjobs import events

import roger
from roger import Node
from roger.cli import main
from roger.info import RejectedMessage
from tests.helpers import wait_for
from tests.roger.support import BROKER, queue_depth

GARBAGE = b"\x00\x01\x02garbage\xff"


def job_body(name: str, out: str, job_id: str = "1" * 32) -> bytes:
    """A valid message body for the job named `name`, built by hand as a foreign producer would."""
    return json.dumps({"v": 1, "id": job_id, "name": name, "args": {"out": out},
                       "queue_key": None, "execution_key": None, "retry_count": 0,
                       "queued_at": 0, "max_execution_time": None}).encode()


def publish(partition: str, *bodies: bytes) -> None:
    with kombu.Connection(BROKER) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(body, routing_key=f"{partition}-default",
                             content_type="application/json", content_encoding="binary")


def rejected(partition: str) -> int:
    return queue_depth(f"{partition}-default.rejected")


def test_rejected_messages_are_listed_with_their_reason_even_when_not_jobs(
        partition, make_settings, out):
    with Node(make_settings(partitions={partition: {"default": 1}})):
        publish(partition, GARBAGE, job_body("nowhere:Missing", out))
        wait_for(lambda: rejected(partition) == 2, what="both rejected")

    raw, job = roger.info.rejected_jobs(partition, "default")
    assert isinstance(raw, RejectedMessage)
    assert raw.body == "\x00\x01\x02garbage\\xff" and raw.size == len(GARBAGE)
    assert raw.rejected_reason == "undecodable" and "utf-8" in raw.rejected_error
    assert (job.id, job.name, job.args) == ("1" * 32, "nowhere:Missing", {"out": out})
    assert job.rejected_reason == "unknown_job" and "nowhere:Missing" in job.rejected_error
    assert rejected(partition) == 2  # listing consumes nothing
    [first] = roger.info.rejected_jobs(partition, "default", limit=1)
    assert first == raw


def test_replay_runs_a_job_whose_class_was_deployed_since(partition, make_settings, out):
    late = job_body("testjobs_late:Late", out)
    with Node(make_settings(partitions={partition: {"default": 1}})):
        publish(partition, late, GARBAGE)
        wait_for(lambda: rejected(partition) == 2, what="both rejected")
    assert events(out, "end") == []

    deployed = make_settings(partitions={partition: {"default": 1}},
                             imports=["testjobs", "testjobs_late"])
    with Node(deployed):
        assert roger.replay_rejected(partition, "default") == 2
        wait_for(lambda: events(out, "end"), what="the late job")
        wait_for(lambda: rejected(partition) == 1, what="the garbage, rejected again")
        [left] = roger.info.rejected_jobs(partition, "default")
    assert [e["id"] for e in events(out, "end")] == ["1" * 32]
    assert left.rejected_reason == "undecodable" and left.size == len(GARBAGE)


def test_replaying_messages_still_invalid_moves_each_once(partition, make_settings):
    # Each rejection is one confirmed publish to a classic queue, which waits
    # for RabbitMQ's disk write: 10 are enough to show each moves once.
    bodies = [b"not json %d" % i for i in range(10)]
    with Node(make_settings(partitions={partition: {"default": 2}})):
        publish(partition, *bodies)
        wait_for(lambda: rejected(partition) == len(bodies), what="all rejected")
        # The node rejects each message again as soon as it is back in the
        # queue: the replay moves what was there when it started, no more.
        assert roger.replay_rejected(partition, "default") == len(bodies)
        wait_for(lambda: rejected(partition) == len(bodies), what="all rejected again")
        listed = roger.info.rejected_jobs(partition, "default")
        assert queue_depth(f"{partition}-default") == 0
    assert sorted(e.body for e in listed) == sorted(b.decode() for b in bodies)
    assert {e.rejected_reason for e in listed} == {"undecodable"}


def test_cli_lists_and_replays_rejected_messages(partition, make_settings, capsys):
    with Node(make_settings(partitions={partition: {"default": 1}})):
        publish(partition, GARBAGE)
        wait_for(lambda: rejected(partition) == 1, what="rejected")

    assert main(["rejected", "list", partition, "--broker-url", BROKER]) == 0
    text = capsys.readouterr().out
    assert "undecodable" in text and "garbage" in text and "(1 rejected messages)" in text
    assert main(["rejected", "list", partition, "--json", "--broker-url", BROKER]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["rejected_reason"] == "undecodable" and entry["size"] == len(GARBAGE)

    # No node serves the queue now: the message waits there, out of .rejected.
    assert main(["rejected", "replay", partition, "--broker-url", BROKER]) == 0
    assert capsys.readouterr().out.strip() == "replayed 1 messages"
    assert (rejected(partition), queue_depth(f"{partition}-default")) == (0, 1)
