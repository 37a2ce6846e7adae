"""The ledger: every job the producers numbered and got confirmed, and what the sink says ran."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import roger
from benchmarks.chaos.jobs import LedgerJob


@dataclass
class Completion:
    n: int
    id: str
    node: str
    pid: int
    attempt: int
    redelivered: bool
    partition: str
    queue: str
    started: float
    t: float
    due_at: int | None = None  # ms since the epoch, on a delayed job's copy

    @property
    def early(self) -> bool:
        """A delayed job that started before its due time (must never happen)."""
        return self.due_at is not None and self.started * 1000 < self.due_at


class Ledger:
    """What the producers confirmed, and what the sink says was done."""

    def __init__(self, sink: Path) -> None:
        self.sink = sink
        self.lock = threading.Lock()
        self.next_n = 0
        self.confirmed: dict[str, int] = {}  # job id -> number
        self.confirmed_at: dict[str, float] = {}
        self.publishes: Counter[str] = Counter()  # job id -> publish attempts
        self.errors = 0  # publishes that raised BrokerError
        self.first_publish = self.last_confirm = 0.0
        self._offsets: dict[Path, int] = {}
        self.completions: dict[str, list[Completion]] = defaultdict(list)
        self.delayed: set[str] = set()  # ids of confirmed delayed jobs
        self.last_due = 0.0  # epoch s when the last delayed job published is due

    def make(self, partition: str, queue: str, sleep: float, hold: float = 0.0,
             delay: int = 0) -> LedgerJob:
        with self.lock:
            n = self.next_n
            self.next_n += 1
        args: dict[str, Any] = {"n": n, "sink": str(self.sink), "sleep": round(sleep, 4)}
        if hold:
            args["hold"] = hold
        job = LedgerJob.create(args)
        job.target = (partition, queue)  # where it goes (not part of the record)
        job.delay = delay  # seconds; 0: not delayed
        return job

    def publish(self, jobs: list[LedgerJob], settings: roger.Settings,
                stop: threading.Event | None = None, give_up: float = 300.0) -> bool:
        """Enqueue `jobs` (one target), retrying the same records on BrokerError.

        Re-publishing the same records is the documented remedy when a
        publish was not confirmed: it may have been queued, so the ids that
        needed it are remembered (a duplicate of them is the producer's).
        Returns False when it gave up (`give_up` seconds of failures).
        """
        partition, queue = jobs[0].target
        deadline = time.monotonic() + give_up
        while True:
            with self.lock:
                for job in jobs:
                    self.publishes[job.id] += 1
                # Before the publish: an unconfirmed attempt may be queued too.
                self.last_due = max(self.last_due, time.time() + jobs[0].delay + 1)
                if not self.first_publish:
                    self.first_publish = time.time()
            try:
                roger.enqueue_many(jobs, partition, queue, settings=settings,
                                   delay=jobs[0].delay or None)
            except roger.BrokerError:
                with self.lock:
                    self.errors += 1
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    return False
                time.sleep(0.3)
                continue
            now = time.time()
            with self.lock:
                for job in jobs:
                    self.confirmed[job.id] = job.args["n"]
                    self.confirmed_at[job.id] = now
                self.last_confirm = now
                if jobs[0].delay:
                    self.delayed.update(job.id for job in jobs)
            return True

    def read_sink(self) -> None:
        """Read what the sink files gained since the last call."""
        for path in sorted(self.sink.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = offset + end
            for line in data[:end].splitlines():
                if line.strip():
                    c = Completion(**json.loads(line))
                    self.completions[c.id].append(c)

    def done_ids(self) -> set[str]:
        return set(self.completions)
