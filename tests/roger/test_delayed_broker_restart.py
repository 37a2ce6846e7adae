"""A delayed job across a RabbitMQ restart: it runs once, not before it is due.

A broker-fault test like `test_broker_faults.py`: it stops and starts the
local RabbitMQ application with rabbitmqctl (and always starts it again).
Run it alone, never while others share the broker:

    python -m pytest -q tests/roger/test_delayed_broker_restart.py
"""

from __future__ import annotations

import time
import uuid

import pytest
from testjobs import Record, events

from roger import Node
from tests.helpers import rabbitmqctl, wait_for
from tests.roger.support import delete_delay_levels, delete_queues

PREFIX = f"dlyr{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker_restored(partition):
    yield
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    delete_delay_levels(PREFIX)
    delete_queues([], [f"{PREFIX}.{partition}.events"])


@pytest.mark.parametrize("down_past_due", [False, True], ids=["back-before-due",
                                                                "down-past-due"])
def test_a_delayed_job_survives_a_broker_restart(partition, make_settings, out,
                                                 broker_restored, down_past_due):
    settings = make_settings(partitions={partition: {"default": 1}},
                             system_exchange_prefix=PREFIX)
    with Node(settings):
        job = Record.create({"out": out}).enqueue(partition, delay=6)
        rabbitmqctl("stop_app")
        if down_past_due:  # the broker is down when the job falls due
            time.sleep(max(0.0, job.due_at / 1000 - time.time() + 2))
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")

        wait_for(lambda: events(out, "end"), timeout=120, what="the job ran after the restart")
        [start] = events(out, "start")
        assert start["id"] == job.id
        assert start["t"] * 1000 >= job.due_at, "a delayed job ran before its due time"
        time.sleep(3)  # a second copy would have come by now
        assert len(events(out, "start")) == 1
