"""The node's tree: partitions at runtime, crash isolation, the entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kombu
import pytest
from testjobs import Keyed, Record, ends, read

import roger
from roger import Node
from tests.helpers import alive, wait_for
from tests.roger.support import BROKER, child_env, delete_queues, queue_depth, queue_names


def queues_of(node, partition):
    return node.status()["running"][partition]["queues"]


def test_start_reconfigure_stop_restart_partition(partition, make_settings, out):
    settings = make_settings(partitions={})
    with Node(settings) as node:
        node.start_partition(partition, {"default": 1})
        assert queues_of(node, partition)["default"]["consuming"]

        node.reconfigure_partition(partition, {"default": 3, "other": 1})
        qs = queues_of(node, partition)
        assert (qs["default"]["max_workers"], qs["other"]["max_workers"]) == (3, 1)
        default_pid = qs["default"]["pid"]

        # The queue dict is complete: "other" stops; 0 workers stops consuming.
        node.reconfigure_partition(partition, {"default": 0})
        qs = queues_of(node, partition)
        assert set(qs) == {"default"} and not qs["default"]["consuming"]
        assert qs["default"]["pid"] == default_pid  # same consumer, resized
        job = Record.create({"out": out}).enqueue(partition)
        assert queue_depth(f"{partition}-default") == 1
        node.reconfigure_partition(partition, {"default": 2})
        wait_for(lambda: ends(out), what="job after resume")
        assert ends(out)[0]["id"] == job.id

        before = node.status()["running"][partition]["pid"]
        node.restart_partition(partition)
        after = node.status()["running"][partition]
        assert after["pid"] != before
        assert after["queues"]["default"]["max_workers"] == 2  # kept its reconfiguration

        node.stop_partition(partition)
        assert partition not in node.status()["running"]
        with pytest.raises(Exception, match="not configured"):
            node.restart_partition(partition)


@pytest.mark.parametrize("idle_after", [0, 30.0])
def test_a_partition_emptied_of_queues_keeps_its_coordinator_and_consumes_again_when_given_some(
        partition, make_settings, out, idle_after):
    settings = make_settings(partitions={partition: {"default": 1}}, idle_after=idle_after)
    with Node(settings) as node:
        first = Record.create({"out": out}).enqueue(partition)  # awake, even with idle queues
        wait_for(lambda: ends(out), what="the first job")
        status = node.reconfigure_partition(partition, {})
        assert status["running"][partition]["queues"] == {}
        job = Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
        with pytest.raises(roger.DuplicateJob):  # its coordinator still answers
            Keyed.create({"out": out, "qkey": "k"}).enqueue(partition)
        assert queue_depth(f"{partition}-default") == 1  # nothing consumes it

        status = node.reconfigure_partition(partition, {"default": 1})
        assert status["running"][partition]["queues"]["default"]["max_workers"] == 1
        done = wait_for(lambda: len(ends(out)) == 2 and ends(out), what="the second job")
        assert [e["id"] for e in done] == [first.id, job.id]


def test_crash_loop_in_one_partition_never_disturbs_another(make_settings, out, partition):
    other = partition + "b"
    settings = make_settings(partitions={partition: {"default": 1}, other: {"default": 1}})
    try:
        with Node(settings) as node:
            other_before = node.status()["running"][other]
            for _ in range(8):  # more than the partition's restart intensity
                pid = node.status()["running"].get(partition, {}).get("queues", {}) \
                    .get("default", {}).get("pid")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            # The crashing partition is restarted by the node (after waiting)...
            wait_for(lambda: partition in node.status()["running"], what="partition back")
            # ...and the other one never noticed.
            other_after = node.status()["running"][other]
            assert other_after["pid"] == other_before["pid"]
            assert other_after["queues"]["default"]["pid"] == \
                other_before["queues"]["default"]["pid"]
            job = Record.create({"out": out}).enqueue(other)
            wait_for(lambda: ends(out), what="job in the quiet partition")
            assert ends(out)[0]["id"] == job.id
    finally:
        delete_queues(queue_names(other, ["default"], [1]))


def test_partition_that_cannot_start_is_waiting_and_retried(make_settings, partition):
    # A classic queue where roger declares a quorum one: the declaration fails.
    with kombu.Connection(BROKER) as conn:
        conn.channel().queue_declare(f"{partition}-default", durable=True, auto_delete=False)
    settings = make_settings(partitions={partition: {"default": 1}}, queue_type="quorum")
    with Node(settings) as node:
        status = node.status()
        assert status["waiting"] == {partition: {"default": 1}}
        assert partition not in status["running"]
        with kombu.Connection(BROKER) as conn:
            conn.channel().queue_delete(f"{partition}-default")
        wait_for(lambda: partition in node.status()["running"], timeout=30,
                 what="partition started after the obstacle went away")
        assert node.status()["waiting"] == {}


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            found.add(k)
            todo.append(k)
    return found


def _run_node(partition, tmp_path, *extra, env_extra=None):
    env = child_env(ROGER_IMPORTS='["testjobs"]', ROGER_SHUTDOWN_TIMEOUT="5",
                    ROGER_STATE_DIR=str(tmp_path / "state"),
                    ROGER_PARTITIONS=f'{{"{partition}": {{"default": 2}}}}')
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "roger.supervisor", *extra], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_python_m_roger_supervisor_serves_and_stops_on_sigterm(partition, make_settings,
                                                               tmp_path, out):
    make_settings()
    proc = _run_node(partition, tmp_path)
    try:
        job = Record.create({"out": out, "sleep": 1.0}).enqueue(partition)
        wait_for(lambda: read(out), what="job start")
        tree = _descendants(proc.pid)
        assert len(tree) >= 3  # partition supervisor, consumer, worker
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert [e["id"] for e in ends(out)] == [job.id]  # the running job finished
    assert not [p for p in tree if alive(p)]


def test_sigkill_of_the_root_leaves_no_process_behind(partition, make_settings, tmp_path, out):
    make_settings()
    proc = _run_node(partition, tmp_path)
    try:
        Record.create({"out": out, "sleep": 30}).enqueue(partition)
        wait_for(lambda: read(out), what="job start")
        tree = _descendants(proc.pid)
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not [p for p in tree if alive(p)], timeout=3, what="no orphans")
    finally:
        proc.kill()
    # The job was not acked: RabbitMQ has it back.
    wait_for(lambda: queue_depth(f"{partition}-default") == 1, what="job requeued")


def test_invalid_settings_fail_at_start_naming_the_field(tmp_path):
    env = child_env(ROGER_PARTITIONS='{"p": {"default": -1}}')
    done = subprocess.run([sys.executable, "-m", "roger.supervisor"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "partitions" in done.stderr


def test_a_second_signal_cuts_the_shutdown_wait_and_requeues(partition, make_settings,
                                                             tmp_path, out):
    make_settings()
    proc = _run_node(partition, tmp_path, env_extra={"ROGER_SHUTDOWN_TIMEOUT": "60"})
    try:
        Record.create({"out": out, "sleep": 60}).enqueue(partition)
        wait_for(lambda: read(out), what="job start")
        tree = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stop consuming, wait for the job...
        _wait_for_line(proc, "stopping: 1 jobs running")
        proc.send_signal(signal.SIGINT)  # ...and again: do not wait
        proc.communicate(timeout=20)  # far below the 60 s shutdown_timeout
    finally:
        proc.kill()
    assert ends(out) == []
    assert not [p for p in tree if alive(p)]
    wait_for(lambda: queue_depth(f"{partition}-default") == 1, what="job requeued")


def _wait_for_line(proc, text, timeout=15.0):
    """Read the node's log until `text` shows up (what an operator would watch for)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if sel.select(deadline - time.monotonic()):
            line = proc.stdout.readline()
            seen.append(line)
            if text in line:
                return
            if not line:
                break
    raise AssertionError(f"{text!r} not logged; got:\n{''.join(seen)}")


def test_reconfigure_keeps_jobs_in_flight(partition, make_settings, out):
    settings = make_settings(partitions={partition: {"default": 1}})
    with Node(settings) as node:
        job = Record.create({"out": out, "sleep": 1.0}).enqueue(partition)
        wait_for(lambda: read(out), what="job start")
        node.reconfigure_partition(partition, {"default": 4})
        node.reconfigure_partition(partition, {"default": 2})
        wait_for(lambda: ends(out), what="job end")
        wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="ack")
        assert queues_of(node, partition)["default"]["settled"] == 1
    assert [e["id"] for e in ends(out)] == [job.id]
