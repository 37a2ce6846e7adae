"""The byte pipe between a consumer and one of its workers: length-prefixed frames.

Every job crosses it twice (the job frame out, the outcome frame back), so it
is on the hot path of every job. `multiprocess`'s `Connection` reads a frame
in two reads (its length, then its body) through an `io.BytesIO`; here a
frame costs one `write` and, in the common case, one `read`.

Two one-way OS pipes, not one socket pair: on a Unix socket the reader of
one direction and the writer of the other share one wait queue, so each time
the consumer read a worker's outcome (freeing the worker's send buffer), the
kernel woke the worker, blocked reading its next job, for nothing. `perf
sched` showed that spurious wake-up on every job: two context switches per
worker per job instead of one. A pipe wakes its readers and its writers
separately.

A frame is a 4-byte big-endian length and that many bytes. Frames may arrive
split or several at once; `read` keeps what is left for the next call.
"""

from __future__ import annotations

import os
import select
import struct

LENGTH = struct.Struct("!I")
READ_SIZE = 65536


def pair() -> tuple[FramePipe, FramePipe]:
    """Two connected ends (the parent keeps one, the forked child the other)."""
    a_read, a_write = os.pipe()
    b_read, b_write = os.pipe()
    return FramePipe(b_read, a_write), FramePipe(a_read, b_write)


class FramePipe:
    """One end of a frame pipe: a blocking read fd and a blocking write fd."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.buf = bytearray()
        self.closed = False

    def fileno(self) -> int:
        """The read side: what a poller watches."""
        return self.rfd

    def send(self, frame: bytes) -> None:
        """Write one frame (blocks while the pipe is full); `OSError` when the peer closed."""
        self.write(LENGTH.pack(len(frame)) + frame)

    def write(self, data: bytes) -> None:
        """Write raw bytes, all of them (frames are made by `send`)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def recv(self) -> bytes:
        """Block until one whole frame has arrived; `EOFError` when the peer closed."""
        while True:
            frame = self._next()
            if frame is not None:
                return frame
            self._fill()

    def read(self) -> list[bytes]:
        """After the pipe polled readable: one `read`, and every frame now complete.

        May return no frame (only part of one has arrived); raises `EOFError`
        when the peer closed and `OSError` when the pipe broke.
        """
        self._fill()
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def poll(self) -> bool:
        """Whether `read` would not block (`poll`, not `select`: fds may exceed 1023)."""
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.rfd)
            os.close(self.wfd)

    def _fill(self) -> None:
        data = os.read(self.rfd, max(READ_SIZE, self._missing()))
        if not data:
            raise EOFError("the other end closed the pipe")
        self.buf += data

    def _missing(self) -> int:
        if len(self.buf) < LENGTH.size:
            return 0
        return LENGTH.size + LENGTH.unpack_from(self.buf)[0] - len(self.buf)

    def _next(self) -> bytes | None:
        if len(self.buf) < LENGTH.size:
            return None
        end = LENGTH.size + LENGTH.unpack_from(self.buf)[0]
        if len(self.buf) < end:
            return None
        frame = bytes(self.buf[LENGTH.size:end])
        del self.buf[:end]
        return frame
