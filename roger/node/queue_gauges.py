"""Queue depths for `roger_queue_messages`, read from RabbitMQ off the scrape path.

AMQP tells a queue's ready messages through a passive declaration (the
management API is not assumed to be there). So:

- ``ready``: the main queue's depth;
- ``buried`` and ``rejected``: the depth of ``.buried`` and ``.rejected``;
- ``delayed``: jobs waiting for a time before they run: those in the retry
  queues `delayed_queues` names (a retry queue is declared at the queue's
  first retry; one found missing is looked for again after
  `MISSING_RECHECK` seconds), plus the jobs delayed with ``delay=``/``at=``,
  which wait in delay levels shared by all partitions: the partition's
  active coordinator counts those (one request per partition and read);
- ``unacked`` is not here: consumers report what they hold (`roger.metrics`).

One thread of the metrics process reads them, on its own connection, when a
scrape finds them older than `MAX_AGE`; the scrape answers with the values
it has (waiting up to `FIRST_WAIT` only for the very first read). A read is
bounded (`BUDGET` seconds, `IO_TIMEOUT` per broker call): a slow or absent
broker costs stale gauges, never a stalled node or scrape.
"""

from __future__ import annotations

import logging
import threading
import time

from roger.amqp import rpc, topology
from roger.amqp.broker import Broker
from roger.amqp.connection import QueueNotFound
from roger.errors import BrokerError
from roger.settings import Settings

__all__ = ["QueueGauges", "delayed_queues"]

log = logging.getLogger("roger.metrics")

MAX_AGE = 5.0  # seconds a read serves scrapes before the next one is started
FIRST_WAIT = 3.0  # seconds the first scrape waits for the first read
BUDGET = 5.0  # seconds one read may take; queues not reached keep their last values
IO_TIMEOUT = 2.0  # seconds per broker call
IDLE_WAIT = 60.0  # the reader thread's wait for work (it re-checks, then waits again)
# A queue found missing (a retry queue is declared at its first retry) counts
# 0 without asking for this long: each miss costs a channel, closed by RabbitMQ
# (20-50 ms for a queue's dozen retry queues, measured on a loaded machine).
MISSING_RECHECK = 30.0

QUEUE_STATES = ("ready", "delayed", "buried", "rejected")


def delayed_queues(settings: Settings, partition: str, queue: str) -> list[str]:
    """The queues whose messages wait for a time before they run: ``delayed``'s source.

    Today these are the retry queues (a retried job waits there for its
    backoff). The hook for delayed jobs (SPEC section 8): add the queues
    that hold them here, or replace this function, and ``delayed`` counts them.
    """
    return [topology.retry_queue_name(partition, queue, s)
            for s in sorted(set(settings.retry_levels))]


class QueueGauges:
    """The latest depths of a node's queues, read by a background thread on demand."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Its own connection, whose calls give up sooner than a publisher's.
        self.broker = Broker(settings.model_copy(update={"confirm_timeout": IO_TIMEOUT}))
        self.values: dict[tuple[str, str], dict[str, int]] = {}
        self.wanted: dict[str, list[str]] = {}  # partition -> queues, from the last scrape
        self.read_at = 0.0  # monotonic time of the last complete read (0: none yet)
        self.missing: dict[str, float] = {}  # queue name -> when it was found missing
        self.cursor = 0  # where the next read starts: a read cut short goes on from there
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<QueueGauges: {len(self.values)} queues>"

    def read(self, partitions: dict[str, dict[str, int]]) -> dict[tuple[str, str], dict[str, int]]:
        """The depths of `partitions`' queues as last read; starts a new read when stale."""
        with self._lock:
            self.wanted = {p: sorted(qs) for p, qs in partitions.items()}
            stale = time.monotonic() - self.read_at > MAX_AGE
        if stale:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="roger-queue-gauges",
                                                daemon=True)
                self._thread.start()
            self._kick.set()
            self._first.wait(FIRST_WAIT)
        with self._lock:
            return {k: dict(v) for k, v in self.values.items() if k[0] in partitions
                    and k[1] in partitions[k[0]]}

    def _run(self) -> None:
        while True:
            if not self._kick.wait(IDLE_WAIT):
                continue
            self._kick.clear()
            try:
                self._read_all()
            except BrokerError as e:
                log.warning("could not read queue depths from RabbitMQ: %s", e)
            except Exception:  # never let the reader die: the gauges would freeze
                log.exception("reading queue depths failed")
            finally:
                self._first.set()

    def _read_all(self) -> None:
        deadline = time.monotonic() + BUDGET
        with self._lock:
            wanted = [(p, q) for p, qs in sorted(self.wanted.items()) for q in qs]
        start = self.cursor % len(wanted) if wanted else 0
        waiting: dict[str, dict[str, int]] = {}
        for i, (p, q) in enumerate(wanted[start:] + wanted[:start]):
            if time.monotonic() > deadline:
                self.cursor = start + i
                log.warning("reading queue depths took over %g s; %d queues keep their last "
                            "values until the next read", BUDGET, len(wanted) - i)
                return
            if p not in waiting:
                waiting[p] = self._delayed_jobs(p)
            values = self._read_queue(p, q, waiting[p])
            with self._lock:
                self.values[(p, q)] = values
        self.cursor = 0
        self.read_at = time.monotonic()

    def _read_queue(self, partition: str, queue: str, waiting: dict[str, int]
                    ) -> dict[str, int]:
        main = topology.queue_name(partition, queue)
        delayed = delayed_queues(self.settings, partition, queue)
        depths = self._depths([main, topology.buried_queue_name(partition, queue),
                               topology.rejected_queue_name(partition, queue), *delayed])
        return {"ready": depths[0], "buried": depths[1], "rejected": depths[2],
                "delayed": sum(depths[3:]) + waiting.get(queue, 0)}

    def _delayed_jobs(self, partition: str) -> dict[str, int]:
        """The partition's jobs delayed with delay=/at= and not yet due, per queue.

        Asked of its active coordinator (wherever it runs, the watcher's
        included); {} when none answers in `IO_TIMEOUT`: the gauge then shows
        the retry queues only, until the next read.
        """
        name = topology.global_queue_name(partition)
        if time.monotonic() - self.missing.get(name, -MISSING_RECHECK) < MISSING_RECHECK:
            return {}
        try:
            with self.broker.channel() as channel:
                reply = rpc.call(channel, name, {"op": "delayed_counts"}, IO_TIMEOUT)
        except BrokerError as e:
            log.debug("[%s] no delayed counts: %s", partition, e)
            self.missing[name] = time.monotonic()
            return {}
        counts = reply.get("delayed") if reply.get("ok") else None
        return {q: n for q, n in counts.items() if isinstance(n, int)} \
            if isinstance(counts, dict) else {}

    def _depths(self, names: list[str]) -> list[int]:
        """Each queue's ready messages; 0 for a queue that does not exist (yet)."""
        out: list[int] = []
        while len(out) < len(names):
            try:
                with self.broker.channel() as channel:
                    while len(out) < len(names):
                        name = names[len(out)]
                        if time.monotonic() - self.missing.get(name, -MISSING_RECHECK) \
                                < MISSING_RECHECK:
                            out.append(0)
                            continue
                        out.append(channel.queue_declare(name, passive=True).message_count)
                        self.missing.pop(name, None)
            except QueueNotFound:  # RabbitMQ closed the channel: the next one on a new channel
                self.missing[names[len(out)]] = time.monotonic()
                out.append(0)
        return out
