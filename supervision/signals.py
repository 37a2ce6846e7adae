"""Signals that only wake a select loop.

A Python signal handler runs between bytecodes at an arbitrary point of the
loop; acting there (stopping children, cancelling consumers) would re-enter
whatever the loop was doing. Instead the handlers do nothing and the
interpreter writes each signal's number to a socket the loop waits on
(`signal.set_wakeup_fd`): the loop reads it and acts in its own time.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterable
from typing import Any


class Wakeup:
    """A socketpair installed as the wakeup fd for `signals`; main thread only.

    Wait on `reader`; `read()` returns the signal numbers received since.
    `close()` puts the previous handlers and wakeup fd back.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, _noop) for s in signals}

    def read(self) -> bytes:
        """The numbers of the signals received since the last read (one byte each)."""
        try:
            return self.reader.recv(64)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self._old_fd)
        self.reader.close()
        self.writer.close()


def _noop(signum: int, frame: Any) -> None:
    """Only wakes the loop, through the wakeup fd."""
