"""A consumer's pool of worker processes.

The processes themselves are supervised by a `supervision.DynamicSupervisor`
embedded in the consumer's loop: it forks them, reaps them and reports every
exit with its reason. This module adds what a job system needs on top: one
private byte pipe per worker for job and outcome frames, which workers are
idle, lazy start up to `size`, recycling after `max_jobs_per_worker`, and
killing a worker whose job overran or was cancelled.

Workers are `temporary` children: when one dies the pool does not fork a
replacement blindly; the consumer settles the job it was running and the
pool starts a new worker as soon as there is work for it (or to keep
`min_workers` alive). A crash loop therefore costs one fork per message,
never a spinning restart.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from multiprocess.connection import wait

from roger.partition import pipe
from roger.partition.worker import decode_outcome, encode_job, run_worker
from roger.settings import Settings
from supervision import ChildSpec, DynamicSupervisor, Event

log = logging.getLogger("roger.pool")

IDLE_EXIT_GRACE = 1.0  # seconds an idle worker gets to exit by itself at shutdown


@dataclass
class Slot:
    """One worker process and the job it runs (None when idle)."""

    id: str
    pid: int
    conn: Any
    tag: int | None = None


class WorkerPool:
    """Up to `size` workers for one queue, started lazily.

    `on_outcome(tag, error_details_or_None)` is called for every finished job;
    `on_lost(tag, exitcode)` when a worker died while running job `tag`.
    """

    def __init__(self, partition: str, queue: str, settings: Settings, size: int,
                 on_outcome: Callable[[int, dict | None], None],
                 on_lost: Callable[[int, int | None], None],
                 inherited: Callable[[], list[Any]] = list) -> None:
        self.partition, self.queue, self.size = partition, queue, size
        self.min_workers = settings.min_workers
        self.on_outcome, self.on_lost = on_outcome, on_lost
        self.inherited = inherited
        spec = ChildSpec("worker", run_worker,
                         args=(partition, queue, settings),
                         kwargs={"max_jobs": settings.max_jobs_per_worker},
                         restart="temporary", shutdown="brutal_kill")
        self.sup = DynamicSupervisor(spec, name=f"{partition}-{queue} pool",
                                     on_event=self._hook)
        # Bumped whenever what `wait_objects` returns changes (a worker starts
        # or exits, a pipe stops being watched): the consumer rebuilds its epoll
        # set on that, not by comparing sets every loop turn.
        self.generation = 0
        self.slots: dict[str, Slot] = {}
        self.idle: deque[str] = deque()
        self._by_conn: dict[Any, Slot] = {}
        self.failure: Exception | None = None  # raised by _on_event, re-raised by handle/kill

    def __repr__(self) -> str:
        return (f"<WorkerPool {self.partition}/{self.queue}: {len(self.slots)} of {self.size} "
                f"workers, {self.busy} busy>")

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> None:
        self.sup.open()
        self.top_up()

    def close(self) -> None:
        """Stop every worker: idle ones exit normally, busy ones are killed.

        The consumer has already waited for the jobs it wanted to finish.
        """
        idle = [self.slots[i] for i in self.idle]
        for slot in idle:
            slot.conn.close()  # EOF: the worker returns from its loop
        waiting = [s for s in map(self.sup.sentinel, (slot.id for slot in idle))
                   if s is not None]
        deadline = time.monotonic() + IDLE_EXIT_GRACE
        while waiting and time.monotonic() < deadline:
            done = wait(waiting, deadline - time.monotonic())
            waiting = [w for w in waiting if w not in done]
        self.sup.close()
        for slot in list(self.slots.values()):
            slot.conn.close()
        self.slots.clear()
        self.idle.clear()
        self._by_conn.clear()

    def resize(self, size: int) -> None:
        """Change the pool's size; idle workers above it stop at once, busy ones after their job."""
        self.size = size
        while len(self.slots) > size and self.idle:
            self._retire(self.idle.pop())
        self.top_up()

    def top_up(self) -> None:
        """Keep `min_workers` (at most `size`) workers alive."""
        while len(self.slots) < min(self.min_workers, self.size):
            self._start()

    # ----------------------------------------------------------------- the loop

    def wait_objects(self) -> list[Any]:
        return [*self.sup.wait_objects(), *self._by_conn]

    def handle(self, ready: list[Any]) -> None:
        # Outcomes first: a worker's last answer must be read before its exit.
        for obj in ready:
            slot = self._by_conn.get(obj)
            if slot is not None:
                self._read(slot, known_readable=True)
        self.sup.handle(ready)
        self._raise_failure()

    # --------------------------------------------------------------------- jobs

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self.idle)

    def has_capacity(self) -> bool:
        return bool(self.idle) or len(self.slots) < self.size

    def dispatch(self, tag: int, redelivered: bool, body: bytes) -> Slot:
        """Send a job to an idle worker (starting one if needed); the caller checked capacity."""
        slot = self.slots[self.idle.popleft()] if self.idle else self._start(busy=True)
        slot.tag = tag
        slot.conn.send(encode_job(tag, redelivered, body))
        return slot

    def kill(self, slot_id: str) -> None:
        """SIGKILL a worker (overrun or cancelled job); `on_lost` follows for its job."""
        self.sup.terminate_child(slot_id)
        self._raise_failure()

    def pids(self) -> list[int]:
        """The pids of the pool's workers, sorted."""
        return sorted(s.pid for s in self.slots.values())

    def running(self) -> dict[int, Slot]:
        return {s.tag: s for s in self.slots.values() if s.tag is not None}

    # ---------------------------------------------------------------- internals

    def _start(self, busy: bool = False) -> Slot:
        parent_end, child_end = pipe.pair()
        try:
            # A worker closes its copies of the consumer's sockets and of the
            # parent ends of pipes (its own, its siblings'): else no EOF comes.
            inherited = [parent_end, *self.inherited(), *(s.conn for s in self.slots.values())]
            slot_id = self.sup.start_child(child_end, inherited)
        finally:
            child_end.close()
        pid = next(c.pid for c in self.sup.which_children() if c.id == slot_id)
        slot = Slot(slot_id, pid, parent_end)
        self.slots[slot_id] = slot
        self._by_conn[parent_end] = slot
        self.generation += 1
        if not busy:
            self.idle.append(slot_id)
        return slot

    def _retire(self, slot_id: str) -> None:
        # Closing its pipe makes an idle worker see EOF and exit normally.
        slot = self.slots[slot_id]
        slot.conn.close()
        self._unwatch(slot.conn)

    def _unwatch(self, conn: Any) -> None:
        if self._by_conn.pop(conn, None) is not None:
            self.generation += 1

    def _read(self, slot: Slot, known_readable: bool = False) -> None:
        # When the loop saw the pipe readable, one read is all: a worker answers
        # once per job, and a frame that arrived only in part makes the pipe
        # readable again. Otherwise (its exit event) read all it wrote before it
        # exited, up to the EOF.
        while not slot.conn.closed and (known_readable or slot.conn.poll()):
            try:
                frames = slot.conn.read()
            except (EOFError, OSError):
                self._unwatch(slot.conn)  # the exit event settles the rest
                return
            for frame in frames:
                self._outcome(slot, frame)
            if known_readable:
                return

    def _outcome(self, slot: Slot, frame: bytes) -> None:
        tag, error, last = decode_outcome(frame)
        slot.tag = None
        if last:
            self._unwatch(slot.conn)  # it is exiting; its exit event follows
        elif len(self.slots) > self.size:
            self._retire(slot.id)
        else:
            self.idle.append(slot.id)
        self.on_outcome(tag, error)

    def _hook(self, event: Event) -> None:
        """`_on_event`, keeping what it raises for `handle` / `kill` to raise.

        supervision logs and swallows an exception from an event hook. Here it
        comes from settling a dead worker's job (say its retry publish was not
        confirmed under a memory alarm): swallowed, it would leave that
        delivery unacked for good, holding a prefetch slot, and the queue
        would stall on this consumer. Raised in the consumer's loop, it ends
        the consumer and RabbitMQ requeues the job.
        """
        try:
            self._on_event(event)
        except Exception as e:
            self.failure = self.failure or e

    def _raise_failure(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _on_event(self, event: Event) -> None:
        if event.kind not in ("exited", "terminated"):
            return
        slot = self.slots.get(event.child_id)
        if slot is None:
            return
        if not slot.conn.closed:
            self._read(slot)  # an answer written just before it exited
        del self.slots[slot.id]
        self._unwatch(slot.conn)
        self.generation += 1  # its sentinel and link are gone too
        if slot.id in self.idle:
            self.idle.remove(slot.id)
        if not slot.conn.closed:
            slot.conn.close()
        if slot.tag is not None:
            self.on_lost(slot.tag, event.exitcode)
        elif event.exitcode not in (0, None) and event.kind == "exited":
            log.warning("[%s/%s] idle worker %d died: %s", self.partition, self.queue,
                        event.pid, event.reason)
        self.top_up()
