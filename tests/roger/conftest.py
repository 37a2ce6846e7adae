"""Fixtures for tests that run real nodes on the local RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import kombu
import pytest
from supervision_helpers import wait_until

from roger import config
from roger.settings import Settings

BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"):
    """Poll `predicate` until truthy: the state we wait for lives in other processes."""
    return wait_until(predicate, timeout, what)


def queue_names(partition: str, queues: list[str], levels: list[int]) -> list[str]:
    names = []
    for q in queues:
        base = f"{partition}-{q}"
        names += [base, f"{base}.buried", f"{base}.rejected"]
        names += [f"{base}.retry.{s}" for s in levels]
    return names


def delete_queues(names: list[str], exchanges: list[str] = ()) -> None:
    with kombu.Connection(BROKER) as conn:
        for name in names:
            ch = conn.channel()
            with suppress(Exception):
                ch.queue_delete(name)
            with suppress(Exception):
                ch.close()
        for name in exchanges:
            ch = conn.channel()
            with suppress(Exception):
                ch.exchange_delete(name)
            with suppress(Exception):
                ch.close()


def queue_depth(name: str) -> int:
    with kombu.Connection(BROKER) as conn:
        ch = conn.channel()
        return ch.queue_declare(name, passive=True).message_count


@pytest.fixture
def partition(request):
    """A fresh partition name; its queues are deleted afterwards.

    So are those of ``name + "b"``, the second partition some tests derive.
    """
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    delete_partition(name)
    delete_partition(name + "b")


def delete_partition(name: str) -> None:
    """Every queue and exchange a test partition may have made."""
    delete_queues(queue_names(name, ["default", "other", "q1", "q2"], [1, 2, 3])
                  + [f"{name}.global"] + [f"{name}-execution-waiting-{k}" for k in "abc"],
                  [f"roger.{name}.events"])


@pytest.fixture
def make_settings(tmp_path: Path):
    def make(**fields) -> Settings:
        base = dict(broker_url=BROKER, imports=["testjobs"],
                    node_name=f"test-{uuid.uuid4().hex[:6]}", retry_levels=[1],
                    shutdown_timeout=5.0, state_dir=str(tmp_path / "state"))
        settings = Settings(**(base | fields))
        config.configure(settings)
        return settings
    return make


@pytest.fixture
def out(tmp_path: Path) -> str:
    return str(tmp_path / "events.jsonl")
