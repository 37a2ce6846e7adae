"""Fixtures for tests that run real nodes on the local RabbitMQ."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from roger import Node, config
from roger.settings import Settings
from tests.roger.support import BROKER, delete_partition, delete_queues
from tests.roger.websupport import free_port


@pytest.fixture
def partition(request):
    """A fresh partition name; its queues are deleted afterwards.

    So are those of ``name + "b"``, the second partition some tests derive.
    """
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    delete_partition(name)
    delete_partition(name + "b")


@pytest.fixture
def make_settings(tmp_path: Path):
    def make(**fields) -> Settings:
        base = dict(broker_url=BROKER, imports=["testjobs"],
                    node_name=f"test-{uuid.uuid4().hex[:6]}", retry_levels=[1],
                    shutdown_timeout=5.0, state_dir=str(tmp_path / "state"),
                    idle_after=0)
        settings = Settings(**(base | fields))
        config.configure(settings)
        return settings
    return make


@pytest.fixture
def node(make_settings, partition):
    """A running node serving `partition` with one worker."""
    with Node(make_settings(partitions={partition: {"default": 1}})) as n:
        yield n


@pytest.fixture
def nodes():
    """Start nodes, each in its own process tree (`start(settings)`); all stop afterwards."""
    started: list[Node] = []

    def start(settings) -> Node:
        node = Node(settings).start()
        started.append(node)
        return node

    yield start
    for node in started:
        if node.pid is not None:
            node.stop(timeout=15)


@pytest.fixture
def out(tmp_path: Path) -> str:
    return str(tmp_path / "events.jsonl")


@pytest.fixture
def web_settings(make_settings):
    """Settings for a node with a status page on a free port, seeing only itself.

    Its own system exchange prefix keeps other tests' nodes (on the shared
    broker) off its page; the exchanges named with it (the system exchange,
    the partitions' events exchanges) are deleted afterwards.
    """
    made: list[Settings] = []

    def make(**fields) -> Settings:
        settings = make_settings(**({"http_port": free_port(),
                                     "system_exchange_prefix": f"web{uuid.uuid4().hex[:8]}"}
                                    | fields))
        made.append(settings)
        return settings
    yield make
    delete_queues([], [name for s in made for name in (
        f"{s.system_exchange_prefix}.system",
        *(f"{s.system_exchange_prefix}.{p}.events" for p in s.partitions))])
