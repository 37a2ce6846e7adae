"""The consumer-worker frame pipe, across a real fork."""

from __future__ import annotations

import os
import threading

import pytest

from roger.partition import pipe
from roger.partition.pipe import LENGTH


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
