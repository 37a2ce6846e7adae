"""The consumer-worker frame pipe, across a real fork."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

import pytest

from roger.partition import pipe
from roger.partition.pipe import LENGTH
from tests.helpers import wait_for


def test_frames_cross_a_fork_both_ways():
    parent, child = pipe.pair()
    pid = os.fork()
    if pid == 0:  # the worker side: echo every frame reversed until EOF
        parent.close()
        try:
            while True:
                child.send(child.recv()[::-1])
        except EOFError:
            os._exit(0)
    child.close()
    try:
        for frame in (b"", b"job", os.urandom(300_000)):  # the last one spans many reads
            parent.send(frame)
            got: list[bytes] = []
            while not got:
                got = parent.read()
            assert got == [frame[::-1]]
    finally:
        parent.close()
        assert os.waitpid(pid, 0)[1] == 0  # EOF ended the child's loop cleanly


def test_read_returns_every_whole_frame_and_keeps_a_partial_one():
    a, b = pipe.pair()
    a.write(LENGTH.pack(1) + b"x" + LENGTH.pack(2) + b"yz" + LENGTH.pack(5) + b"ab")
    assert b.read() == [b"x", b"yz"]
    assert not b.poll()
    a.write(b"cde")
    assert b.poll()
    assert b.read() == [b"abcde"]


def test_recv_waits_for_the_rest_of_a_split_frame():
    a, b = pipe.pair()
    a.write(LENGTH.pack(6) + b"abc")
    later = threading.Timer(0.05, a.write, args=(b"def",))
    later.start()
    assert b.recv() == b"abcdef"
    later.join()


def test_eof_and_a_closed_end():
    a, b = pipe.pair()
    a.send(b"last")
    a.close()
    assert a.closed
    a.close()  # closing twice is harmless
    assert b.recv() == b"last"
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.read()
    with pytest.raises(OSError):
        b.send(b"to nobody")


def _sleeping_switches(pid: int) -> int:
    """The voluntary context switches of `pid`, once it sleeps (blocked in a read)."""
    stat, status = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/status")
    wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "S",
             what="the child blocked in its read")
    for line in status.read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def test_reading_an_answer_does_not_wake_its_sender_waiting_for_the_next_frame():
    # A worker answers, then blocks for its next job; the consumer reading the
    # answer must not wake it (on a Unix socket pair it did, once per job).
    parent, child = pipe.pair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        child.send(b"outcome")
        child.recv()  # the next job
        os._exit(0)
    child.close()
    try:
        wait_for(parent.poll, what="the answer")
        before = _sleeping_switches(pid)
        assert parent.read() == [b"outcome"]
        time.sleep(0.2)  # room for a wake-up, if one came
        assert _sleeping_switches(pid) == before
        parent.send(b"job")
    finally:
        parent.close()
        assert os.waitpid(pid, 0)[1] == 0


def test_poll_works_for_descriptors_above_1023():
    # A consumer with hundreds of workers holds two pipe ends per worker.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    spare = [os.dup(0) for _ in range(1030)]
    try:
        a, b = pipe.pair()
        assert b.fileno() > 1023
        assert not b.poll()
        a.send(b"x")
        assert b.poll() and b.read() == [b"x"]
        a.close()
        b.close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
