"""Reading AMQP frames fast from an epoll loop, and acking deliveries in few frames.

py-amqp is written for a thread that blocks in `drain_events`; the consumer
instead waits in epoll beside its worker pipes. These helpers let it read
whole frames with one syscall per wakeup and ack settled deliveries in as
few frames as AMQP allows.
"""

from __future__ import annotations

from collections import deque
from typing import Any


def drain_pending(connection: Any) -> None:
    """Dispatch every frame that has already arrived, without waiting for more."""
    while True:
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:
            return

READ_CHUNK = 4096  # what py-amqp's own reads ask for (see buffer_reads)
READ_SIZE = 65536  # what the loop reads when the socket is readable


def buffer_reads(transport: Any) -> None:
    """Let py-amqp read the socket in chunks instead of one recv per frame part.

    py-amqp asks for exactly the bytes it needs (a frame's header, its
    payload, its end byte: three recv calls a frame, nine a message) but
    keeps any extra it is given in its read buffer. Asking for a chunk
    turns a burst of deliveries into a few calls. Complete frames may then
    wait in that buffer, invisible to epoll: the loop checks `has_frame`.
    """
    recv = transport.sock.recv
    transport._quick_recv = lambda n: recv(max(n, READ_CHUNK))


def has_frame(transport: Any) -> bool:
    """True when py-amqp's read buffer holds a whole frame."""
    buf = transport._read_buffer
    if len(buf) < 7:
        return False
    size = int.from_bytes(buf[3:7], "big")
    return len(buf) >= 8 + size


class AckBatcher:
    """Which settled deliveries to ack, coalesced with AMQP's `multiple` flag.

    Delivery tags grow on a channel. `multiple=True` acks every unacked tag
    up to the one given, so it only covers a run of settled deliveries with
    no unsettled one before it; a settled delivery behind a still-running
    one is acked alone, so that a long job never holds the prefetch window.

    >>> b = AckBatcher()
    >>> for t in (1, 2, 3, 4): b.delivered(t)
    >>> b.settled(2); b.settled(1); b.settled(4)
    >>> b.flush()
    [(2, True), (4, False)]
    """

    def __init__(self) -> None:
        self.outstanding: deque[int] = deque()  # delivered, not yet acked, in tag order
        self.ready: set[int] = set()

    def delivered(self, tag: int) -> None:
        self.outstanding.append(tag)

    def settled(self, tag: int) -> None:
        self.ready.add(tag)

    def forget(self, tag: int) -> None:
        """A delivery rejected (requeued) instead of acked."""
        self.ready.discard(tag)
        try:
            self.outstanding.remove(tag)
        except ValueError:
            pass

    def flush(self) -> list[tuple[int, bool]]:
        if not self.ready:
            return []
        out: list[tuple[int, bool]] = []
        last = None
        while self.outstanding and self.outstanding[0] in self.ready:
            last = self.outstanding.popleft()
            self.ready.discard(last)
        if last is not None:
            out.append((last, True))
        for tag in sorted(self.ready):
            self.outstanding.remove(tag)
            out.append((tag, False))
        self.ready.clear()
        return out
