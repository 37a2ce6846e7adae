"""Admission: which delivery runs, and when.

A decoded delivery is, in this order:

- held, if a delivery with its job id (the same record enqueued twice) is
  already here, until that twin is settled; then it comes in again, as if it
  just arrived, so the two run one after the other, never side by side;
- skipped (settled as cancelled) if its job id was cancelled;
- held until the coordinator gives it its job id's twin lock, if it may
  have a twin in another consumer (marked by its producer, or an id
  registered as enqueued again: see `roger.partition.twin_locks`); the
  lock is given back when it leaves, whichever way;
- held until the coordinator grants its execution key, or parked FIFO in the
  key's waiting queue when another job holds it;
- run at once by an idle worker, or queued in the backlog, in arrival order,
  until one is free (a prefetch above the pool, see `prefetch_multiplier`).

Running jobs are tracked here with their deadline (`max_execution_time`):
one that overruns, or is cancelled, has its worker killed, and the pool
reports the loss to `Settlement.lost`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

from roger.amqp.topology import TWIN_HEADER
from roger.partition.coordinator_link import CoordinatorLink
from roger.partition.pool import WorkerPool
from roger.partition.settlement import Settlement
from roger.record import Record

__all__ = ["Admission", "Delivery", "Inflight"]

log = logging.getLogger("roger.consumer")


@dataclass
class Delivery:
    """A decoded delivery on its way to a worker."""

    tag: int
    redelivered: bool
    body: bytes
    job: Record
    props: dict


@dataclass
class Inflight:
    """A job running in a worker."""

    job: Record
    slot_id: str
    started: float
    deadline: float | None
    kill_reason: str | None = None  # "timeout" or "cancelled" once its worker is being killed
    token: str = ""  # its twin lock's token, when it claims one while running


class Admission:
    """The deliveries of one consumer between their arrival and their settlement."""

    def __init__(self, label: str, pool: WorkerPool, coordinator: CoordinatorLink,
                 settlement: Settlement) -> None:
        self.label = label
        self.pool = pool
        self.coordinator = coordinator
        self.settlement = settlement
        self.inflight: dict[int, Inflight] = {}
        self.backlog: deque[Delivery] = deque()
        self.twins: deque[Delivery] = deque()  # copies waiting for their twin to settle
        self.acquired: set[str] = set()  # ids of jobs holding their execution key here
        self.ident = secrets.token_hex(6)  # this consumer, in the tokens of its twin locks
        self.locks: dict[str, str] = {}  # job id -> token of the twin lock it holds here
        self.lock_waits: dict[int, Delivery] = {}  # tag -> delivery waiting for its twin lock

    def __repr__(self) -> str:
        return (f"<Admission {self.label}: {len(self.inflight)} running, "
                f"{len(self.backlog)} waiting for a worker, {len(self.twins)} for a twin, "
                f"{len(self.acquired)} holding keys, {len(self.locks)} twin locks, "
                f"{len(self.lock_waits)} waiting for one>")

    # ----------------------------------------------------------------- arrival

    def receive(self, delivery: Delivery) -> None:
        job = delivery.job
        if self._here(job.id):
            # The same record enqueued twice (a producer retrying after a
            # BrokerError). The copy waits here: handed back to RabbitMQ, it
            # would come straight back to us, again and again, while its twin
            # runs. It holds one prefetch slot meanwhile.
            log.info("[%s] job %s (%s) is here already: its copy waits for it", self.label,
                     job.id, job.name)
            self.twins.append(delivery)
        elif self.coordinator.is_cancelled(job.id):
            self._cancelled(delivery)
        elif self._needs_lock(delivery):
            self._lock(delivery, claim=not self._marked(delivery))
        else:
            self._onward(delivery)

    def _pass(self, delivery: Delivery) -> None:
        """On from the twin lock: cancelled meanwhile, or onward."""
        if self.coordinator.is_cancelled(delivery.job.id):
            self._cancelled(delivery)
        else:
            self._onward(delivery)

    def _onward(self, delivery: Delivery) -> None:
        """A delivery known not cancelled: to its execution key, or to a worker."""
        job = delivery.job
        if job.execution_key is not None and job.id not in self.acquired:
            self.coordinator.acquire(job, delivery)
        else:
            self._admit(delivery)

    def key_answered(self, delivery: Delivery, ok: bool, draining: bool) -> None:
        """The coordinator's answer to `acquire` for `delivery`'s execution key."""
        job = delivery.job
        if draining:
            if ok:
                self.coordinator.release_exec(job)
            self._unlock(job.id, delivery.tag)
            self.settlement.requeue(delivery.tag)
        elif ok:
            self.acquired.add(job.id)
            if self._needs_lock(delivery):  # registered while it asked for the key
                self._lock(delivery, claim=True)
            else:
                self._admit(delivery)
        else:
            # Another job holds the key: wait in line (FIFO) in its waiting queue.
            log.info("[%s] job %s waits for execution key %s", self.label, job.id,
                     job.execution_key)
            marked = {TWIN_HEADER: 1} if self._marked(delivery) or job.id in self.locks else None
            self.coordinator.park(job, delivery.body, job.queue, marked)
            self.settlement.ack(delivery.tag)
            self._unlock(job.id, delivery.tag)

    def _admit(self, delivery: Delivery) -> None:
        if self.pool.has_capacity() and not self.backlog:
            self._run(delivery)
        else:
            self.backlog.append(delivery)

    def _run(self, delivery: Delivery) -> None:
        job = delivery.job
        slot = self.pool.dispatch(delivery.tag, delivery.redelivered, delivery.body)
        now = time.monotonic()
        limit = job.max_execution_time
        job.started_at = int(time.time() * 1000)
        self.inflight[delivery.tag] = Inflight(job, slot.id, now, now + limit if limit else None)
        log.debug("[%s] job %s (%s) started in worker %d", self.label, job.id, job.name,
                  slot.pid)

    def _here(self, job_id: str) -> bool:
        """Whether a delivery of `job_id` is between `receive` and its settlement here."""
        return (any(entry.job.id == job_id for entry in self.inflight.values())
                or any(d.job.id == job_id for d in self.backlog)
                or any(d.job.id == job_id for d in self.coordinator.pending.values())
                or any(d.job.id == job_id for d in self.lock_waits.values()))

    def _cancelled(self, delivery: Delivery, ran_for: float | None = None) -> None:
        self.acquired.discard(delivery.job.id)
        self.settlement.cancelled(delivery.tag, delivery.job, ran_for)
        self._unlock(delivery.job.id, delivery.tag)

    # -------------------------------------------------------------- twin locks

    @staticmethod
    def _marked(delivery: Delivery) -> bool:
        """Whether its producer marked it as a copy that may have a twin elsewhere."""
        headers = delivery.props.get("application_headers")
        return bool(headers and headers.get(TWIN_HEADER))

    def _needs_lock(self, delivery: Delivery) -> bool:
        job_id = delivery.job.id
        return job_id not in self.locks and (
            self._marked(delivery) or self.coordinator.knows_twin(job_id))

    def _token(self, tag: int) -> str:
        return f"{self.ident}:{tag}"

    def _lock(self, delivery: Delivery, claim: bool) -> None:
        """Wait for the twin lock of `delivery`'s job id (FIFO behind its twins)."""
        job = delivery.job
        log.debug("[%s] job %s asks for its twin lock", self.label, job.id)
        job.__dict__["_twin"] = True  # its retries keep the mark (see Settlement)
        self.lock_waits[delivery.tag] = delivery
        self.coordinator.acquire_twin(job.id, self._token(delivery.tag), delivery,
                                      claim=claim, wait=True)

    def lock_answered(self, delivery: Delivery | Inflight, ok: bool, draining: bool) -> None:
        """The coordinator's answer to `acquire_twin` (a waiting delivery, or a running job)."""
        if isinstance(delivery, Inflight):  # claimed for a job already running
            if ok and any(e is delivery for e in self.inflight.values()):
                self.locks[delivery.job.id] = delivery.token
            elif ok:  # it settled meanwhile
                self.coordinator.release_twin(delivery.job.id, delivery.token)
            else:
                log.warning("[%s] job %s runs here while a twin holds its lock elsewhere",
                            self.label, delivery.job.id)
            return
        if self.lock_waits.pop(delivery.tag, None) is None:
            return  # handed back meanwhile (its release left the line)
        job = delivery.job
        if not ok:  # the coordinator failed on it (a bug, logged there): do not stall the job
            log.error("[%s] job %s: the coordinator refused its twin lock; it runs without",
                      self.label, job.id)
        else:
            self.locks[job.id] = self._token(delivery.tag)
        if draining:
            self._unlock(job.id, delivery.tag)
            self.settlement.requeue(delivery.tag)
        else:
            log.debug("[%s] job %s holds its twin lock", self.label, job.id)
            self._pass(delivery)

    def twins_registered(self, ids: list[str]) -> None:
        """Producers enqueue these ids again: the copies here take their locks now."""
        wanted = set(ids) - self.locks.keys()
        for tag, entry in self.inflight.items():
            if entry.job.id in wanted:  # it runs: it cannot wait, it takes the placeholder's
                entry.token = self._token(tag)
                entry.job.__dict__["_twin"] = True
                self.coordinator.acquire_twin(entry.job.id, entry.token, entry, claim=True,
                                              wait=False)
        for delivery in [d for d in self.backlog if d.job.id in wanted]:
            self.backlog.remove(delivery)
            self._lock(delivery, claim=True)

    def _unlock(self, job_id: str, tag: int) -> None:
        """Delivery `tag` of `job_id` left: give its twin lock back, if it holds it."""
        token = self._token(tag)
        if self.locks.get(job_id) == token:
            del self.locks[job_id]
            self.coordinator.release_twin(job_id, token)

    def lock_tokens(self) -> list[tuple[str, str]]:
        """(job id, token) of the twin locks held here and of those waited for.

        Renewed once per heartbeat: the held ones so they do not lapse; the
        waited ones so that the coordinator, if the one that queued them
        died, has a request that makes its standby active (it then lets
        the locks of dead holders lapse and answers the waiters).
        """
        return [*self.locks.items(),
                *((d.job.id, self._token(tag)) for tag, d in self.lock_waits.items())]

    # -------------------------------------------------------------- every turn

    def dispatch_backlog(self) -> None:
        """Let in copies whose twin has settled; start waiting deliveries as workers free up."""
        if self.twins:
            held, self.twins = self.twins, deque()
            for delivery in held:  # in arrival order; one whose twin is still here waits on
                self.receive(delivery)
        while self.backlog and self.pool.has_capacity():
            delivery = self.backlog.popleft()
            if self.coordinator.is_cancelled(delivery.job.id):
                self._cancelled(delivery)
            else:
                self._run(delivery)

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for entry in list(self.inflight.values()):
            if entry.deadline is not None and entry.kill_reason is None and now >= entry.deadline:
                entry.kill_reason = "timeout"
                log.warning("[%s] job %s (%s) exceeded max_execution_time %s s; killing worker",
                            self.label, entry.job.id, entry.job.name,
                            entry.job.max_execution_time)
                self.pool.kill(entry.slot_id)

    def next_deadline(self, now: float) -> float:
        """Seconds until the next running job's deadline (inf when none)."""
        deadlines = [e.deadline for e in self.inflight.values()
                     if e.deadline is not None and e.kill_reason is None]
        return min(deadlines) - now if deadlines else float("inf")

    def cancel_waiting(self, job_id: str) -> None:
        """Skip `job_id` at once if it waits here for a worker (settled as cancelled)."""
        for delivery in [d for d in self.backlog if d.job.id == job_id]:
            self.backlog.remove(delivery)
            self._cancelled(delivery)

    def cancel_running(self, job_id: str) -> None:
        """Kill the worker running `job_id`, if it runs here; its loss settles it."""
        for entry in self.inflight.values():
            if entry.job.id == job_id and entry.kill_reason is None:
                entry.kill_reason = "cancelled"
                log.info("[%s] job %s cancelled while running; killing its worker",
                         self.label, job_id)
                self.pool.kill(entry.slot_id)
                return

    # --------------------------------------------------------------- departure

    def finished(self, tag: int, error: dict | None) -> None:
        """A worker answered for `tag`: settle per the disposition it decided."""
        entry = self.inflight.pop(tag, None)
        if entry is None:
            return
        holds = self._release_hold(entry.job)
        ran_for = time.monotonic() - entry.started
        if error is None:
            log.debug("[%s] job %s done", self.label, entry.job.id)
            self.settlement.settle(tag, entry.job, "done", holds_exec_key=holds, ran_for=ran_for)
        else:
            self.settlement.settle(tag, entry.job, error["disposition"], error["error"],
                                   holds_exec_key=holds, ran_for=ran_for)
        self._unlock(entry.job.id, tag)

    def lost(self, tag: int, exitcode: int | None, closing: bool) -> None:
        """The worker running `tag` died or was killed."""
        entry = self.inflight.pop(tag, None)
        if entry is None:
            return
        if closing:  # the consumer is stopping: the job goes back to the queue
            self.settlement.requeue(tag)
            self._quiet_unlock(entry.job.id, tag)
            return
        ran_for = time.monotonic() - entry.started
        if entry.kill_reason == "cancelled":
            self._cancelled(Delivery(tag, False, b"", entry.job, {}), ran_for)
            return
        outcome = "timeout" if entry.kill_reason == "timeout" else "crashed"
        self.settlement.lost(tag, entry.job, outcome, exitcode, self._release_hold(entry.job),
                             ran_for)
        self._unlock(entry.job.id, tag)

    def _release_hold(self, job: Record) -> bool:
        if job.id in self.acquired:
            self.acquired.discard(job.id)
            return True
        return False

    def waiting(self) -> list[Record]:
        """The jobs delivered here that have not started: backlog, held twins, key requests."""
        return [d.job for d in (*self.backlog, *self.twins, *self.lock_waits.values(),
                                *self.coordinator.pending.values())]

    def requeue_backlog(self) -> None:
        """Hand the deliveries that have not started back to RabbitMQ (with the held copies).

        Those waiting for their twin lock leave its line (their release
        says so); those holding it give it back.
        """
        for waiting in (self.twins, self.backlog):
            while waiting:
                delivery = waiting.popleft()
                self.settlement.requeue(delivery.tag)
                self._quiet_unlock(delivery.job.id, delivery.tag)
        for tag, delivery in list(self.lock_waits.items()):
            del self.lock_waits[tag]
            self.coordinator.forget_twin_request(delivery)
            self.settlement.requeue(tag)
            self._quiet_release(delivery.job.id, self._token(tag))

    def requeue_running(self) -> None:
        """Hand back the jobs of workers that are gone (the consumer is closing)."""
        for tag in list(self.inflight):
            entry = self.inflight.pop(tag)
            self.settlement.requeue(tag)
            self._quiet_unlock(entry.job.id, tag)

    def _quiet_unlock(self, job_id: str, tag: int) -> None:
        if self.locks.get(job_id) == self._token(tag):
            del self.locks[job_id]
            self._quiet_release(job_id, self._token(tag))

    def _quiet_release(self, job_id: str, token: str) -> None:
        # On the way out the connection may be gone: then the lock lapses
        # when its holder stops renewing it (see roger.partition.twin_locks).
        try:
            self.coordinator.release_twin(job_id, token)
        except Exception as e:
            log.warning("[%s] twin lock of job %s not released (%s): it lapses unrenewed",
                        self.label, job_id, e)
