"""The driver's side of `benchmarks.record`: count the jobs that really ran."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from benchmarks.common import BenchError

POLL = 0.05  # seconds between reads: cheap next to the jobs, fine enough for timing


class Tally:
    """Reads the record files of one run incrementally.

    `done[index]` is when job `index` first ran and `values[index]` the value
    it recorded (latency); a job recorded twice (an at-least-once redelivery)
    counts once and adds to `duplicates`.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.done: dict[int, float] = {}
        self.values: dict[int, float] = {}
        self.duplicates = 0
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}

    def poll(self) -> int:
        """Read what was appended since the last call; return the number of unique jobs."""
        for name in os.listdir(self.out):
            path = os.path.join(self.out, name)
            with open(path, "rb") as f:
                f.seek(self._offsets.get(name, 0))
                chunk = f.read()
            if not chunk:
                continue
            self._offsets[name] = self._offsets.get(name, 0) + len(chunk)
            data = self._partial.pop(name, b"") + chunk
            lines = data.split(b"\n")
            if lines[-1]:
                self._partial[name] = lines[-1]  # a line still being written
            for line in lines[:-1]:
                self._parse(line)
        return len(self.done)

    def _parse(self, line: bytes) -> None:
        fields = line.split()
        index = int(fields[0])
        if index in self.done:
            self.duplicates += 1
            return
        self.done[index] = float(fields[1])
        if len(fields) > 2:
            self.values[index] = float(fields[2])

    def wait(self, n: int, timeout: float, alive: Callable[[], bool] = lambda: True,
             what: str = "jobs", on_count: Callable[[int], None] | None = None) -> None:
        """Block until `n` unique jobs ran; `BenchError` on timeout, a stall or a dead system.

        Bounded twice: `timeout` in all, and 30 s without any progress.
        `on_count(count)` is called after every read.
        """
        deadline = time.monotonic() + timeout
        last_count, last_progress = -1, time.monotonic()
        while True:
            count = self.poll()
            if on_count is not None:
                on_count(count)
            if count >= n:
                return
            now = time.monotonic()
            if count != last_count:
                last_count, last_progress = count, now
            if not alive():
                raise BenchError(f"the system under test died after {count}/{n} {what}")
            if now > deadline or now - last_progress > 30.0:
                raise BenchError(f"only {count}/{n} {what} ran within the time allowed")
            time.sleep(POLL)
