"""The Celery side: ``celery -A benchmarks.peers.celery_app worker -P prefork -c 4 -Q QUEUE``.

Configured as the issue asks and as a tuned production deployment would
be: late acks, a prefetch multiplier of 1, no result backend, and none of
the cluster chatter (gossip, mingle, events, remote control) that the
other systems do not have either.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from benchmarks.record import record

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL",
                                            "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(args: dict[str, Any]) -> None:
    """Does nothing but prove it ran (throughput)."""
    record(args["out"], args["i"])


@app.task(name="bench.latency")
def latency(args: dict[str, Any]) -> None:
    """Records how long after its enqueue call it started (latency)."""
    started = time.time()
    record(args["out"], args["i"], started - args["t"])
