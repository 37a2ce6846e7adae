"""Cluster-wide features with several nodes (separate process trees) on one RabbitMQ."""

from __future__ import annotations

import os
import signal
from collections import Counter

import multiprocess
import pytest
from testjobs import Keyed, Record, WaitForKill, events

import roger
from roger import Node, info
from tests.helpers import alive, wait_for
from tests.roger.support import queue_depth


def kill_node(node: Node) -> None:
    os.kill(node.pid, signal.SIGKILL)
    node._handle.join(10)
    node._handle = node._api = None


def test_work_is_shared_and_nothing_runs_twice(partition, make_settings, nodes, out):
    a = nodes(make_settings(partitions={partition: {"default": 2}}))
    b = nodes(make_settings(partitions={partition: {"default": 2}}))
    jobs = roger.enqueue_many([Record.create({"out": out, "sleep": 0.02}) for _ in range(200)],
                              partition)
    wait_for(lambda: len(events(out, "end")) == 200, timeout=60, what="200 jobs")
    counts = Counter(e["id"] for e in events(out, "end"))
    assert set(counts) == {j.id for j in jobs} and set(counts.values()) == {1}
    pids = {e["pid"] for e in events(out, "end")}
    workers_a = set(a.status()["running"][partition]["queues"]["default"]["workers"])
    workers_b = set(b.status()["running"][partition]["queues"]["default"]["workers"])
    assert pids & workers_a and pids & workers_b  # both nodes took a share


def _enqueue_keyed(partition, out, barrier, results):
    barrier.wait(10)
    try:
        Keyed.create({"out": out, "qkey": "the-key", "sleep": 0.5}).enqueue(partition)
        results.put("ok")
    except roger.DuplicateJob:
        results.put("duplicate")


def test_queue_key_is_unique_under_concurrent_enqueuers(partition, make_settings, nodes, out):
    nodes(make_settings(partitions={partition: {"default": 1}}))
    nodes(make_settings(partitions={partition: {"default": 1}}))
    ctx = multiprocess.get_context("fork")
    barrier, results = ctx.Barrier(12), ctx.Queue()
    procs = [ctx.Process(target=_enqueue_keyed, args=(partition, out, barrier, results))
             for _ in range(12)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    assert outcomes == ["duplicate"] * 11 + ["ok"]
    # Held while running, released once done: then the key is free again.
    wait_for(lambda: events(out, "end"), what="the keyed job")
    wait_for(lambda: _try_enqueue(partition, out), what="key released")


def _try_enqueue(partition, out):
    try:
        Keyed.create({"out": out, "qkey": "the-key"}).enqueue(partition)
        return True
    except roger.DuplicateJob:
        return False


def test_execution_key_runs_one_at_a_time_across_nodes(partition, make_settings, nodes, out):
    nodes(make_settings(partitions={partition: {"default": 3}}))
    nodes(make_settings(partitions={partition: {"default": 3}}))
    jobs = [Keyed.create({"out": out, "xkey": "a", "sleep": 0.15}) for _ in range(6)]
    roger.enqueue_many(jobs, partition)
    wait_for(lambda: len(events(out, "end")) == 6, timeout=30, what="6 keyed jobs")
    spans = sorted((s["t"], e["t"]) for s in events(out, "start") for e in events(out, "end")
                   if s["id"] == e["id"])
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    assert Counter(e["id"] for e in events(out, "end")) == Counter(j.id for j in jobs)


def test_execution_key_waiters_run_in_order(partition, make_settings, nodes, out):
    nodes(make_settings(partitions={partition: {"default": 4}}))
    jobs = [Keyed.create({"out": out, "xkey": "b", "i": i, "sleep": 0.05}) for i in range(5)]
    roger.enqueue_many(jobs, partition)
    wait_for(lambda: len(events(out, "end")) == 5, timeout=30, what="5 keyed jobs")
    assert [e["id"] for e in events(out, "start")] == [j.id for j in jobs]


def test_cancel_a_running_job_on_another_node(partition, make_settings, nodes, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:CancelCallbacks")
    nodes(settings)
    nodes(make_settings(partitions={partition: {"default": 1}},
                        callbacks="testjobs:CancelCallbacks"))
    job = WaitForKill.create({"out": out}).enqueue(partition)
    pid = wait_for(lambda: events(out, "start"), what="job start")[0]["pid"]
    roger.cancel(partition, job.id)
    cancels = wait_for(lambda: events(out, "on_cancel"), what="on_cancel")
    wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="ack")
    wait_for(lambda: not alive(pid), what="worker killed")
    assert [c["id"] for c in cancels] == [job.id]
    assert events(out, "on_error") == []
    assert len(events(out, "on_cancel")) == 1


def test_cancel_a_queued_job_skips_it(partition, make_settings, nodes, out):
    settings = make_settings(partitions={partition: {"default": 1}},
                             callbacks="testjobs:CancelCallbacks")
    nodes(settings)
    roger.pause(partition, "default")
    job = Record.create({"out": out}).enqueue(partition)
    after = Record.create({"out": out}).enqueue(partition)
    roger.cancel(partition, job.id)
    roger.resume(partition, "default")
    wait_for(lambda: events(out, "end"), what="the job after")
    assert [e["id"] for e in events(out, "end")] == [after.id]
    assert [e["id"] for e in events(out, "on_cancel")] == [job.id]


def test_pause_stops_every_node_and_resume_restarts_them(partition, make_settings, nodes, out):
    nodes(make_settings(partitions={partition: {"default": 1}}))
    nodes(make_settings(partitions={partition: {"default": 1}}))
    roger.pause(partition, "default")
    wait_for(lambda: _all_paused(partition), what="paused everywhere")
    job = Record.create({"out": out}).enqueue(partition)
    assert queue_depth(f"{partition}-default") == 1  # nobody consumes it
    roger.resume(partition, "default")
    wait_for(lambda: events(out, "end"), what="job after resume")
    assert events(out, "end")[0]["id"] == job.id


def _all_paused(partition):
    view = info.partitions(timeout=5)
    queues = [n["running"][partition]["default"] for n in view.values()
              if partition in n["running"]]
    return view if len(queues) == 2 and all(q["paused"] for q in queues) else None


def test_state_survives_restart_of_all_nodes(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        roger.pause(partition, "default")
        Keyed.create({"out": out, "qkey": "kept"}).enqueue(partition)
    with Node(make_settings(partitions={partition: {"default": 1}})) as node:
        queue = node.status()["running"][partition]["queues"]["default"]
        assert queue["paused"] and not queue["consuming"]
        with pytest.raises(roger.DuplicateJob):
            Keyed.create({"out": out, "qkey": "kept"}).enqueue(partition)
        roger.resume(partition, "default")
        wait_for(lambda: events(out, "end"), what="job after resume")


def test_cancelling_a_parked_job_frees_its_execution_key(partition, make_settings, nodes, out):
    nodes(make_settings(partitions={partition: {"default": 2}},
                        callbacks="testjobs:CancelCallbacks"))
    first = Keyed.create({"out": out, "xkey": "c", "sleep": 1.0}).enqueue(partition)
    wait_for(lambda: events(out, "start"), what="first job runs")
    parked = Keyed.create({"out": out, "xkey": "c"}).enqueue(partition)
    roger.cancel(partition, parked.id)
    last = Keyed.create({"out": out, "xkey": "c"}).enqueue(partition)
    wait_for(lambda: len(events(out, "end")) == 2, what="first and last jobs")
    assert [e["id"] for e in events(out, "end")] == [first.id, last.id]
    assert [e["id"] for e in events(out, "on_cancel")] == [parked.id]


def test_coordinator_takeover_keeps_keys_and_pauses(partition, make_settings, nodes, out):
    a = nodes(make_settings(partitions={partition: {"default": 1}}))
    b = nodes(make_settings(partitions={partition: {"default": 1}}))
    roger.pause(partition, "default")  # answered by a's coordinator (first subscriber)
    Keyed.create({"out": out, "qkey": "k1"}).enqueue(partition)
    kill_node(a)
    with pytest.raises(roger.DuplicateJob):
        Keyed.create({"out": out, "qkey": "k1"}).enqueue(partition)
    queue = b.status()["running"][partition]["queues"]["default"]
    assert queue["paused"] and not queue["consuming"]
    roger.resume(partition, "default")
    wait_for(lambda: events(out, "end"), what="keyed job on the survivor")
    wait_for(lambda: _try_enqueue_key(partition, out, "k1"), what="key released")


def _try_enqueue_key(partition, out, key):
    try:
        Keyed.create({"out": out, "qkey": key}).enqueue(partition)
        return True
    except roger.DuplicateJob:
        return False


def test_info_lists_every_node_and_a_dead_one_drops_out(partition, make_settings, nodes, out):
    a = nodes(make_settings(partitions={partition: {"default": 1}}))
    b = nodes(make_settings(partitions={partition: {"default": 2}}))
    ours = {a.settings.node_name, b.settings.node_name}
    view = wait_for(lambda: ours <= set(v := info.partitions(timeout=5)) and v, what="two nodes")
    assert {view[n]["running"][partition]["default"]["max_workers"] for n in ours} == {1, 2}
    job = WaitForKill.create({"out": out}).enqueue(partition)
    wait_for(lambda: events(out, "start"), what="job start")
    # A generous timeout: other nodes on this broker (other tests, benchmarks)
    # are live peers too, and the call waits for them.
    found = wait_for(lambda: [j for jobs in info.running_jobs(partition, timeout=5).values()
                              for j in jobs.get(partition, [])], what="running job listed")
    assert [j.id for j in found] == [job.id]
    assert isinstance(found[0], WaitForKill) and found[0].started_at is not None
    kill_node(a)
    wait_for(lambda: a.settings.node_name not in (v := info.partitions(timeout=5))
             and b.settings.node_name in v, timeout=15, what="dead node gone")
