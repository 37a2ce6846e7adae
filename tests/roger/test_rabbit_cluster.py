"""roger on a private three-node RabbitMQ cluster (issue 17): broker nodes die, nothing is lost.

One cluster (`benchmarks.cluster.RabbitCluster`: own node names, ports, data
directories and Erlang cookie; the shared broker on 5672 is never touched) is
booted once for this module and torn down after its last test. Every test leaves
all three nodes running. Run these alone with ``pytest -m cluster``; leave them
out with ``-m "not cluster"``.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial

import pytest
from testjobs import Keyed, Record, ends, events

import roger
from benchmarks import procs
from benchmarks.chaos import ChaosConfig, run
from benchmarks.chaos.config import CLUSTER_SHORT_KINDS
from benchmarks.cluster import RabbitCluster
from roger import Node
from roger.amqp.connection import connect, rotated_urls
from tests.helpers import alive, wait_for
from tests.roger.support import enqueue_eventually

pytestmark = pytest.mark.cluster

# Retried on BrokerError every 0.2 s: a node just died, the next connect fails over.
enqueue = partial(enqueue_eventually, pause=0.2)


@pytest.fixture(scope="module")
def rabbit_cluster():
    """Three RabbitMQ nodes joined in one cluster, for this module's tests.

    Stopped after them, not at the session's end: three idle Erlang VMs and
    their disk writes would otherwise share the machine with every test that
    follows.
    """
    nodes = RabbitCluster(3)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster):
    """The session's cluster, with every node running again after the test."""
    yield rabbit_cluster
    for i in range(len(rabbit_cluster.nodes)):
        rabbit_cluster.thaw(i)
        if not rabbit_cluster.alive(i):
            rabbit_cluster.restart(i)
    try:
        rabbit_cluster.wait_running(30.0)
    except Exception:  # a node cut off too long rejoins only when booted again
        running = rabbit_cluster.running_nodes()
        for i, node in enumerate(rabbit_cluster.nodes):
            if node.name not in running:
                rabbit_cluster.kill(i)
                rabbit_cluster.restart(i)
        rabbit_cluster.wait_running()
    for i in range(len(rabbit_cluster.nodes)):  # an app stopped by the test
        rabbit_cluster.nodes[i].run("rabbitmqctl", "start_app", timeout=120, check=False)
    rabbit_cluster.wait_running()


@pytest.fixture
def on_cluster(cluster, make_settings):
    """`make_settings` aimed at the cluster, with short heartbeat and connect timeouts."""
    def make(**fields):
        # A publish waiting for confirms sends no heartbeat: confirm_timeout stays
        # below 2 heartbeats, or RabbitMQ drops the producer's connection first.
        return make_settings(broker_url=cluster.urls, heartbeat=2.0, connect_timeout=2.0,
                             confirm_timeout=3.0, side_queue_type="quorum", **fields)
    return make


def running(node: Node, partition: str) -> bool:
    return partition in node.status()["running"]


def test_connections_spread_over_the_nodes_and_fail_over(cluster, on_cluster):
    settings = on_cluster()
    assert settings.broker_urls == cluster.urls
    firsts = Counter(rotated_urls(settings)[0] for _ in range(30))
    assert set(firsts) == set(cluster.urls)  # each connection starts at another node
    cluster.kill(1)
    for _ in range(6):  # whichever node a connection starts at, it gets one that is up
        conn = connect(settings)
        try:
            assert conn.as_uri(include_password=False).split("@")[1] != \
                cluster.urls[1].split("@")[1]
        finally:
            conn.release()


def test_a_broker_node_killed_under_load_loses_no_job(cluster, on_cluster, partition, out):
    with Node(on_cluster(partitions={partition: {"default": 2}})) as node:
        sent = [enqueue(Record.create({"out": out, "sleep": 0.02}), partition)
                for _ in range(40)]
        wait_for(lambda: len(ends(out)) >= 5, timeout=60, what="jobs running")
        busiest = cluster.connections().most_common(1)[0][0]
        cluster.kill(busiest)
        sent += [enqueue(Record.create({"out": out, "sleep": 0.02}), partition)
                 for _ in range(40)]
        wait_for(lambda: {e["id"] for e in ends(out)} >= {j.id for j in sent}, timeout=90,
                 what="every job done after the node died")
        wait_for(lambda: running(node, partition), timeout=60, what="the partition running")
        # A job whose ack died with the node ran again: at least once, never lost.
        assert set(Counter(e["id"] for e in ends(out))) == {j.id for j in sent}


def consumer_broker_node(cluster: RabbitCluster, node: Node, partition: str) -> int | None:
    """The index of the broker node the consumer of `partition`'s default queue talks to."""
    pid = node.status()["running"][partition]["queues"]["default"].get("pid")
    for i, rabbit in enumerate(cluster.nodes):
        if pid and procs.tcp_client_ports([pid], rabbit.port):
            return i
    return None


def test_a_consumer_gives_up_a_frozen_broker_node_and_comes_back(cluster, on_cluster,
                                                                 partition, out):
    with Node(on_cluster(partitions={partition: {"default": 2}})) as node:
        Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: ends(out), timeout=30, what="the first job")
        wait_for(lambda: consumer_broker_node(cluster, node, partition) is not None,
                 what="the consumer's broker node")
        frozen = consumer_broker_node(cluster, node, partition)
        consumer = node.status()["running"][partition]["queues"]["default"]["pid"]
        cluster.freeze(frozen)
        try:
            # After 2 missed heartbeats the consumer ends, without waiting for a
            # close-ok that a frozen node never sends (it would hang there).
            wait_for(lambda: not alive(consumer), timeout=20,
                     what="the consumer of the frozen node gone")
        finally:
            # Thawed well within net_ticktime (60 s): a longer freeze splits the
            # Erlang cluster, and until then RabbitMQ blocks declarations
            # cluster-wide, so no new consumer could start anywhere.
            cluster.thaw(frozen)
        jobs = [enqueue(Record.create({"out": out}), partition) for _ in range(5)]
        wait_for(lambda: {e["id"] for e in ends(out)} >= {j.id for j in jobs}, timeout=60,
                 what="jobs done after the node thawed")


def test_keys_pause_and_cancel_hold_while_the_leaders_move(cluster, on_cluster, partition,
                                                            out):
    settings = on_cluster(partitions={partition: {"default": 2}})
    with Node(settings) as node:
        roger.pause(partition, "default")
        wait_for(lambda: node.status()["running"][partition]["queues"]["default"]["paused"],
                 what="paused")
        keyed = Keyed.create({"out": out, "qkey": "q1"}).enqueue(partition)
        doomed = Record.create({"out": out}).enqueue(partition)
        # Two jobs of one execution key: they must never overlap.
        serial = [Keyed.create({"out": out, "xkey": "x1", "sleep": 0.5}).enqueue(partition)
                  for _ in range(2)]

        # Stop the node leading the coordinator's queue: every queue it leads
        # elects a leader elsewhere, and every connection to it fails over.
        leaders = cluster.leaders(partition)
        victim = cluster.index(leaders[f"{partition}.global"])
        cluster.stop_app(victim)
        moved = cluster.leaders(partition)
        assert moved[f"{partition}.global"] != leaders[f"{partition}.global"]

        with pytest.raises(roger.DuplicateJob):  # the queue key still held
            Keyed.create({"out": out, "qkey": "q1"}).enqueue(partition)
        roger.cancel(partition, doomed.id)
        time.sleep(3 * settings.heartbeat)  # the paused queue stays paused past a reconnect
        assert not events(out, "start")
        wait_for(lambda: running(node, partition), timeout=60, what="partition running")
        assert node.status()["running"][partition]["queues"]["default"]["paused"]

        cluster.start_app(victim)
        roger.resume(partition, "default")
        wait_for(lambda: {e["id"] for e in ends(out)} >= {keyed.id, *(j.id for j in serial)},
                 timeout=60, what="the kept jobs done")
        assert doomed.id not in {e["id"] for e in events(out, "start")}
        a, b = sorted((e for e in ends(out) if e["id"] in {j.id for j in serial}),
                      key=lambda e: e["t"])
        starts = {e["id"]: e["t"] for e in events(out, "start")}
        assert starts[b["id"]] >= a["t"]  # one execution key: one after the other
        Keyed.create({"out": out, "qkey": "q1"}).enqueue(partition)  # key released


@pytest.mark.timeout(420)  # bounded waits inside; this only guards against a hang
def test_no_confirmed_job_is_lost_under_broker_node_faults(cluster, tmp_path):
    """The short ledger run on the cluster (``python -m benchmarks.chaos --short --cluster``)."""
    report = run(ChaosConfig.short_cluster(tmp_path / "chaos"), cluster=cluster)
    table = report.render()
    print(table)  # shown with -s, and by pytest on failure
    assert report.injected_kinds == set(CLUSTER_SHORT_KINDS), table
    assert report.confirmed >= report.cfg.jobs, table
    assert report.lost == 0, table
    assert report.still_queued == 0, table
    assert report.recovered, table
    assert report.done_once + report.duplicated + report.dead == report.confirmed, table
    assert "unexplained" not in report.dup_causes, table
