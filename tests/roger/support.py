"""What the roger tests need of the local RabbitMQ and of `python -m roger...` children."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import kombu

import roger

BROKER = "amqp://guest:guest@127.0.0.1:5672//"

TESTJOBS_DIR = Path(__file__).resolve().parent
"""Where `testjobs` is: settings name it in ``imports``, so nodes must find it."""


def enqueue_eventually(job: Any, partition: str, timeout: float = 60.0,
                       pause: float = 0.5) -> Any:
    """What a producer does while the broker recovers or fails over: retry on BrokerError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return job.enqueue(partition)
        except roger.BrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m roger...` child of a test.

    Its ``PYTHONPATH`` holds the folder of `testjobs` and the one this process
    imported `roger` from, so the child runs the roger under test.
    """
    pythonpath = os.pathsep.join([str(TESTJOBS_DIR), str(Path(roger.__file__).parent.parent)])
    return dict(os.environ, PYTHONPATH=pythonpath, ROGER_BROKER_URL=BROKER) | extra


def queue_names(partition: str, queues: list[str], levels: list[float]) -> list[str]:
    names = []
    for q in queues:
        base = f"{partition}-{q}"
        names += [base, f"{base}.buried", f"{base}.rejected"]
        names += [f"{base}.retry.{s}" for s in levels]
    return names


def delete_queues(names: list[str], exchanges: list[str] = ()) -> None:
    """Delete these queues and exchanges where they exist; missing ones are no error."""
    with kombu.Connection(BROKER) as conn:
        _delete_each(conn, names, lambda ch, name: ch.queue_delete(name))
        _delete_each(conn, exchanges, lambda ch, name: ch.exchange_delete(name))


def _delete_each(conn: kombu.Connection, names: list[str],
                 delete: Callable[[Any, str], object]) -> None:
    for name in names:
        ch = conn.channel()  # a failed delete closes its channel: a fresh one for each
        with suppress(Exception):
            delete(ch, name)
        with suppress(Exception):
            ch.close()


def queue_depth(name: str) -> int:
    with kombu.Connection(BROKER) as conn:
        ch = conn.channel()
        return ch.queue_declare(name, passive=True).message_count


def delete_partition(name: str) -> None:
    """Every queue and exchange a test partition may have made."""
    delete_queues(queue_names(name, ["default", "other", "q1", "q2"], [0.5, 1, 2, 3])
                  + [f"{name}.global", f"{name}.links"]
                  + [f"{name}-execution-waiting-{k}" for k in "abc"],
                  [f"roger.{name}.events"])


def delete_delay_levels(prefix: str) -> None:
    """The delay levels of `system_exchange_prefix` `prefix` (tests give each module its own)."""
    levels = [f"{prefix}.delay.{level:02d}" for level in range(28)]
    delete_queues(levels, [*levels, f"{prefix}.delay.deliver", f"{prefix}.system"])
