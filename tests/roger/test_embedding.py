"""`roger.Node` inside a host program: start/stop cycles, the host's signals and threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from testjobs import Record, ends, read

from roger import Node
from roger.control import Client
from roger.settings import DEFAULT_RETRY_LEVELS
from tests.helpers import ROOT, wait_for
from tests.roger.support import child_env, delete_queues, queue_names


def children() -> set[int]:
    """This process's child processes, forked from any of its threads."""
    kids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            kids.update(map(int, (task / "children").read_text().split()))
        except OSError:  # the thread ended meanwhile
            pass
    return kids


def open_fds() -> dict[int, str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the fd listdir itself used
            pass
    return fds


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_state() -> tuple:
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()
                if s not in (signal.SIGKILL, signal.SIGSTOP)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return handlers, wakeup, signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_start_stop_20_times_leaks_no_process_and_no_fd(make_settings, partition, out):
    settings = make_settings(partitions={partition: {"default": 1}})
    # A first cycle that runs a job, so one-time opens (the producer's broker
    # connection in this process) are in the baseline, not counted as leaks.
    with Node(settings):
        job = Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: ends(out), what="job")
        assert read(out)[-1]["id"] == job.id
    kids, fds = children(), open_fds()
    for i in range(20):
        with Node(settings) as node:
            assert partition in node.status()["running"]
            assert node.pid in children() - kids
        assert children() == kids, f"cycle {i}: child processes left behind"
        assert not settings.control_socket.exists()
    assert open_fds() == fds


def test_the_host_keeps_its_signal_handlers_and_threads(make_settings, partition):
    got: list[int] = []
    previous = {s: signal.signal(s, lambda n, f: got.append(n))
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        before, threads = signal_state(), threading.enumerate()
        with Node(make_settings(partitions={partition: {"default": 1}})) as node:
            assert signal_state() == before
            assert threading.enumerate() == threads
            # The host's SIGTERM is the host's: the node (own process group) never sees it.
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: got == [signal.SIGTERM], what="host handler")
            assert partition in node.status()["running"]
        assert signal_state() == before
        assert threading.enumerate() == threads
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_a_node_started_from_a_short_lived_thread_outlives_it(make_settings, partition):
    # Children die with the thread that forked them: the node must not.
    node = Node(make_settings(partitions={partition: {"default": 1}}))
    starter = threading.Thread(target=node.start)
    starter.start()
    starter.join()
    try:
        assert partition in node.status()["running"]
        assert alive(node.pid)
    finally:
        assert node.stop() == 0
    wait_for(lambda: threading.active_count() == 1, what="keeper thread gone")


def test_with_block_stops_the_node_when_the_host_raises(make_settings, partition):
    with pytest.raises(RuntimeError, match="host trouble"), \
            Node(make_settings(partitions={partition: {"default": 1}})) as node:
        pid = node.pid
        raise RuntimeError("host trouble")
    assert not alive(pid)


def test_two_nodes_side_by_side(make_settings, partition, out):
    mine = partition + "b"  # only the second node serves this one
    first = make_settings(partitions={partition: {"default": 1}})
    second = make_settings(partitions={partition: {"default": 1}, mine: {"default": 1}})
    assert first.control_socket != second.control_socket
    try:
        with Node(first) as a, Node(second) as b:
            for node in (a, b):
                with Client(node.settings.control_socket) as c:
                    assert c.request("status")["node"] == node.settings.node_name
            assert set(a.status()["running"]) == {partition}
            assert set(b.status()["running"]) == {partition, mine}
            a.stop()
            # The second node is on its own and still serves the shared partition.
            job = Record.create({"out": out}).enqueue(partition)
            wait_for(lambda: ends(out), what="job")
            assert read(out)[-1]["id"] == job.id
            assert b.status()["running"][mine]
    finally:
        delete_queues(queue_names(mine, ["default"], [1]))


def test_the_embedding_example_runs(tmp_path):
    env = child_env(ROGER_STATE_DIR=str(tmp_path / "state"))
    try:
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "embedded.py")],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        delete_queues(queue_names("embedded_example", ["default"], DEFAULT_RETRY_LEVELS)
                      + ["embedded_example.global", "embedded_example.links"],
                      ["roger.embedded_example.events"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 5 jobs done" in done.stdout
