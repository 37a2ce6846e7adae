"""Broker-side helpers for the driver: declare, publish raw, watch depth, clean up."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import kombu

from benchmarks.common import BenchError


@contextmanager
def connection(url: str, **options: Any) -> Iterator[kombu.Connection]:
    """A kombu connection (py-amqp transport), connected, released on exit."""
    conn = kombu.Connection(url, connect_timeout=5, **options)
    try:
        conn.ensure_connection(max_retries=2)
        yield conn
    finally:
        conn.release()


def server_version(url: str) -> str:
    """RabbitMQ's version, as the server announces it at connection time."""
    with connection(url) as conn:
        props = conn.connection.server_properties
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)


def declare(url: str, name: str, queue_type: str = "classic") -> None:
    """Declare a durable queue of `queue_type` (as peers and roger do)."""
    with connection(url) as conn:
        conn.channel().queue_declare(name, durable=True, auto_delete=False,
                                     arguments={"x-queue-type": queue_type})


def kombu_queue(name: str, queue_type: str) -> kombu.Queue:
    return kombu.Queue(name, routing_key=name, durable=True,
                       queue_arguments={"x-queue-type": queue_type})


def depth(url: str, name: str) -> int:
    """Messages ready in queue `name` (0 if it does not exist)."""
    with connection(url) as conn:
        try:
            return conn.channel().queue_declare(name, passive=True).message_count
        except Exception:
            return 0


def delete(url: str, names: Iterable[str]) -> None:
    """Delete queues (missing ones are fine); returns once the broker processed them.

    Deletes are sent without waiting for each reply; one synchronous call on
    the same channel afterwards returns only once every delete before it is
    done (a channel's methods are handled in order).
    """
    names = list(names)
    if not names:
        return
    with connection(url) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name, nowait=True)
        channel.basic_qos(0, 1, False)  # the synchronous fence


def publish_json(url: str, queue: str, bodies: Iterable[dict], queue_type: str) -> int:
    """Publish persistent JSON messages without confirms (to feed the raw consumer)."""
    count = 0
    with connection(url) as conn:
        producer = conn.Producer(serializer="json")
        q = kombu_queue(queue, queue_type)
        q(conn.default_channel).declare()
        for body in bodies:
            producer.publish(body, routing_key=queue, delivery_mode=2)
            count += 1
    return count


def body_of(index: int, out: str) -> dict:
    """The argument every system's job gets: a small dict, as a real job's would be."""
    return {"i": index, "out": out, "customer": 42, "note": "benchmark"}


def body_size(out: str) -> int:
    return len(json.dumps(body_of(0, out)))


def suppress_errors() -> contextlib.AbstractContextManager[None]:
    """For cleanup paths: a failing delete must not hide the benchmark's own error."""
    return contextlib.suppress(Exception)


def _list(kind: str) -> list[str]:
    try:
        done = subprocess.run(["rabbitmqctl", kind, "-q", "--no-table-headers", "name"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def file_descriptors() -> dict[str, int]:
    """RabbitMQ's file descriptor and socket use and limits (empty without rabbitmqctl).

    They bound how many queues and connections the broker can hold: each
    quorum queue keeps files open, each consumer has its connection.
    """
    try:
        done = subprocess.run(["rabbitmqctl", "status", "--formatter", "json"],
                              capture_output=True, text=True, timeout=60)
        return dict(json.loads(done.stdout).get("file_descriptors", {}))
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def sweep(url: str, marker: str) -> int:
    """Delete every queue and exchange whose name contains `marker`; returns how many.

    A safety net behind the per-case deletes: roger declares more than the
    benchmark knows of (retry, buried and rejected queues, a partition's
    coordinator queue and events exchange), and the suite must leave the
    broker as it found it. Needs `rabbitmqctl` (silently does nothing without).
    """
    queues = [q for q in _list("list_queues") if marker in q]
    exchanges = [e for e in _list("list_exchanges") if marker in e]
    delete(url, queues)
    if exchanges:
        with connection(url) as conn:
            channel = conn.channel()
            for name in exchanges:
                channel.exchange_delete(name, nowait=True)
            channel.basic_qos(0, 1, False)
    return len(queues) + len(exchanges)


def wait_total(url: str, names: list[str], n: int, timeout: float = 60.0) -> None:
    """Wait until the queues `names` hold `n` messages together."""
    deadline = time.monotonic() + timeout
    with connection(url) as conn:
        channel = conn.channel()
        while True:
            count = sum(channel.queue_declare(q, passive=True).message_count for q in names)
            if count >= n:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"queues {names} hold {count} of {n} messages after {timeout} s")
            time.sleep(0.1)


def redact(url: str) -> str:
    """`url` without its password."""
    return kombu.Connection(url).as_uri(include_password=False)
