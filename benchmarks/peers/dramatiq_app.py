"""The Dramatiq side: ``dramatiq benchmarks.peers.dramatiq_app:broker -p 4 -t 1 -Q QUEUE``.

Dramatiq binds an actor to its queue when the actor is declared, so the
queue of a run comes from ``BENCH_QUEUE`` in the worker; the driver builds
its own broker and actors for each queue with `build`. Default middleware,
default (unconfirmed) publishing: Dramatiq as it ships.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from benchmarks.record import record


def pika_url(url: str) -> str:
    """kombu's ``//`` (the default vhost "/") is pika's ``/%2F``."""
    return url[:-2] + "/%2F" if url.endswith("//") else url


URL = pika_url(os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))


def _noop(args: dict[str, Any]) -> None:
    record(args["out"], args["i"])


def _latency(args: dict[str, Any]) -> None:
    started = time.time()
    record(args["out"], args["i"], started - args["t"])


def build(queue: str, url: str = URL) -> tuple[RabbitmqBroker, dramatiq.Actor, dramatiq.Actor]:
    """A broker with the two benchmark actors bound to `queue`."""
    rabbit = RabbitmqBroker(url=pika_url(url))
    noop = dramatiq.actor(_noop, actor_name="bench_noop", queue_name=queue, broker=rabbit)
    latency = dramatiq.actor(_latency, actor_name="bench_latency", queue_name=queue,
                             broker=rabbit)
    return rabbit, noop, latency


def queues(queue: str) -> list[str]:
    """Every queue Dramatiq declares for `queue` (main, delay, dead letters)."""
    return [queue, f"{queue}.DQ", f"{queue}.XQ"]


if "BENCH_QUEUE" in os.environ:  # in the worker, started by the dramatiq CLI
    broker, noop, latency = build(os.environ["BENCH_QUEUE"])
    dramatiq.set_broker(broker)
