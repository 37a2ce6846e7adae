"""Restart intensity: a sliding window of restart times."""

from __future__ import annotations

import time
from collections import deque


class RestartWindow:
    """Allows at most `intensity` restarts within any `period` seconds.

    >>> w = RestartWindow(intensity=1, period=10)
    >>> w.add(now=0.0), w.add(now=1.0), w.add(now=20.0)
    (True, False, True)
    """

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self._times: deque[float] = deque()

    def add(self, now: float | None = None) -> bool:
        """Record a restart; False when it exceeds the intensity."""
        now = time.monotonic() if now is None else now
        self._times.append(now)
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        return len(self._times) <= self.intensity
