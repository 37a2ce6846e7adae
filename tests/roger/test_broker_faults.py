"""Real broker faults, injected with rabbitmqctl; the broker is always restored."""

from __future__ import annotations

import os
import signal
import time

import pytest
from testjobs import Record, RetryableWaitForKill, ends, read

import roger
from roger import Node
from tests.helpers import rabbitmqctl, wait_for
from tests.roger.support import enqueue_eventually


@pytest.fixture
def broker_restored():
    yield
    rabbitmqctl("start_app")
    rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    rabbitmqctl("await_startup")


def test_node_recovers_when_connections_are_dropped(partition, make_settings, out,
                                                    broker_restored):
    with Node(make_settings(partitions={partition: {"default": 2}})) as node:
        Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: len(ends(out)) == 1, what="first job")
        rabbitmqctl("close_all_connections", "test: dropping every connection")
        job = enqueue_eventually(Record.create({"out": out}), partition)
        wait_for(lambda: len(ends(out)) == 2, timeout=60, what="job after reconnect")
        assert ends(out)[1]["id"] == job.id
        wait_for(lambda: partition in node.status()["running"], what="partition running")


def test_node_recovers_after_broker_restart(partition, make_settings, out, broker_restored):
    with Node(make_settings(partitions={partition: {"default": 2}})) as node:
        rabbitmqctl("stop_app")
        # While the broker is down the partition cannot run: it waits, and
        # the node itself stays up.
        wait_for(lambda: partition in node.status()["waiting"], timeout=60,
                 what="partition waiting")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        job = enqueue_eventually(Record.create({"out": out}), partition)
        wait_for(lambda: ends(out), timeout=90, what="job after the broker came back")
        assert ends(out)[0]["id"] == job.id
        assert node.status()["waiting"] == {}


def test_producer_gets_a_clear_error_under_a_memory_alarm(partition, make_settings,
                                                          broker_restored):
    settings = make_settings(confirm_timeout=2.0)
    Record.create({"out": "/dev/null"}).enqueue(partition)  # connection and queue ready
    rabbitmqctl("set_vm_memory_high_watermark", "0")
    started = time.monotonic()
    with pytest.raises(roger.BrokerError):
        roger.enqueue_many([Record.create({"out": "/dev/null"})], partition, settings=settings)
    assert time.monotonic() - started < 30  # a bounded wait, not a hang


def test_a_crash_settled_under_a_memory_alarm_does_not_jam_the_consumer(
        partition, make_settings, out, broker_restored):
    # Settling a crashed job publishes its retry; under a memory alarm that
    # publish is never confirmed. The consumer must not leave the delivery
    # unacked for good: with one worker (prefetch 1) the queue would stall.
    settings = make_settings(partitions={partition: {"default": 1}}, confirm_timeout=2.0)
    with Node(settings) as node:
        RetryableWaitForKill.create({"out": out}).enqueue(partition)
        wait_for(lambda: read(out), what="job start")
        rabbitmqctl("set_vm_memory_high_watermark", "0")
        os.kill(read(out)[0]["pid"], signal.SIGKILL)
        time.sleep(settings.confirm_timeout + 2.0)  # the retry's confirm times out
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        job = enqueue_eventually(Record.create({"out": out}), partition)
        wait_for(lambda: [e for e in ends(out) if e["id"] == job.id], timeout=60,
                 what="a job after the alarm cleared")
        wait_for(lambda: partition in node.status()["running"], what="partition running")
