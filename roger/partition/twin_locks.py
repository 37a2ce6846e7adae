"""Twin locks: copies of one job id never run side by side, across consumers and nodes.

The same record enqueued twice (same job id) runs twice, one copy after
the other. Inside one consumer `roger.partition.admission` holds a copy
while its twin is there. Across consumers, a copy that may have a twin
takes a lock on its job id at the coordinator before it runs, and gives
it back when it settles. Plain jobs never come here: only copies that may
have a twin do, which the producer knows (see `roger.producer`):

- every copy of a record with a caller-chosen id carries the
  ``x-roger-twin`` header (`roger.amqp.topology.TWIN_HEADER`);
- a record enqueued again (a producer retrying after a `BrokerError`, a
  record read back and enqueued again) carries it too, but its first copy
  went out unmarked. So before publishing the copy the producer
  *registers* the id: the coordinator gives the lock to a placeholder for
  `grace` seconds and broadcasts the id; a consumer holding the first copy
  (running or waiting) takes the lock over for it at once, and consumers
  remember registered ids (`known`) so that a later delivery of the first
  copy takes the lock too. Each consumer process of the partition answers
  the broadcast (`seen`), after its claim if it has one: once every one
  counted has answered, no one holds the first copy, and the copy need not
  wait out the grace (see `roger.partition.twin_ops` for the count).

A lock is held by one delivery of one consumer (its `token`), never by the
id: two copies share the id. The holder renews it while it holds it (see
`CoordinatorLink.renew_twins`); a holder that died (SIGKILL) stops
renewing, and its lock is freed `lease` seconds later. A copy that cannot
get the lock waits in line (FIFO): the coordinator answers it when the
lock is handed to it. Plain data, no I/O, time passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["PLACEHOLDER", "Grant", "TwinLocks", "grace", "lease", "renew_every"]

PLACEHOLDER = ""  # the holder of a registered id until a consumer takes it over
NO_HEARTBEAT = 10.0  # seconds standing in for the heartbeat when heartbeats are off


def renew_every(heartbeat: float) -> float:
    """How often a holder renews its locks: once per AMQP heartbeat interval."""
    return heartbeat or NO_HEARTBEAT


def lease(heartbeat: float) -> float:
    """How long a lock outlives its holder's last renewal: three renewals missed.

    A consumer alive and connected renews every heartbeat; one that stops
    is dead or cut off, and RabbitMQ, which closes a connection after two
    missed heartbeats, has requeued its deliveries by then.
    """
    return 3 * renew_every(heartbeat)


def grace(heartbeat: float, confirm_timeout: float) -> float:
    """How long a registered id's placeholder holds its lock before a marked copy gets it.

    A consumer holding the first copy hears the broadcast at its next loop
    turn (a turn blocks at most `confirm_timeout`, on a confirmed publish)
    and claims the lock. One that does not hear it has lost its connection:
    it kills the jobs it can no longer ack within two heartbeats, and
    RabbitMQ requeues them, to be delivered again as a known id.
    """
    return 2 * renew_every(heartbeat) + confirm_timeout


class Grant(NamedTuple):
    """A lock handed to a waiting copy: answer it on `reply_to` with `corr`."""

    job_id: str
    token: str
    reply_to: str
    corr: str


@dataclass
class TwinLocks:
    """The partition's twin locks and registered ids (part of `roger.partition.state`)."""

    # job id -> {"holder": token, "until": epoch s, "waiters": [[token, reply_to, corr]]}
    locks: dict[str, dict] = field(default_factory=dict)
    known: dict[str, float] = field(default_factory=dict)  # registered id -> forget after
    seq: int = 0  # registrations so far: a consumer answers those after its state fetch

    def to_dict(self) -> dict:
        return {"locks": self.locks, "known": self.known, "seq": self.seq}

    @classmethod
    def from_dict(cls, data: dict | None) -> TwinLocks:
        data = data or {}
        return cls({k: {**v, "until": float(v["until"]),
                        "waiters": [list(w) for w in v.get("waiters", [])]}
                    for k, v in data.get("locks", {}).items()},
                   {k: float(v) for k, v in data.get("known", {}).items()},
                   int(data.get("seq", 0)))

    def register(self, job_id: str, now: float, grace: float, lease: float, forget: float,
                 consumers: int) -> list[Grant]:
        """A copy of `job_id` is about to be published and its first copy went out unmarked.

        The placeholder holds a free lock for `grace` s: time for a consumer
        that holds the first copy to hear the broadcast and claim the lock;
        or until the `consumers` counted all said they have `seen` it (none
        counted: no consumer is up to hold it, so no placeholder).
        """
        self.known[job_id] = max(self.known.get(job_id, 0.0), forget)
        lock = self.locks.get(job_id)
        if lock is None:
            if consumers <= 0:
                return []
            lock = self.locks[job_id] = {"holder": PLACEHOLDER, "until": now + grace,
                                         "waiters": []}
        if lock["holder"] != PLACEHOLDER:
            return []
        if consumers <= 0:
            return self._pass_on(job_id, lock, now, lease)
        lock["answers"], lock["answered"] = consumers, []
        return []

    def seen(self, job_ids: list[str], consumer: str, now: float, lease: float) -> list[Grant]:
        """`consumer`, counted, heard the broadcast of `job_ids` (and claimed what it holds).

        When every consumer counted has, the placeholder goes: the first
        copy is nowhere it could run, and the copies waiting go on.
        """
        grants: list[Grant] = []
        for job_id in job_ids:
            lock = self.locks.get(job_id)
            if (lock is None or lock["holder"] != PLACEHOLDER or "answers" not in lock
                    or consumer in lock["answered"]):
                continue
            lock["answered"].append(consumer)
            if len(lock["answered"]) >= lock["answers"]:
                grants += self._pass_on(job_id, lock, now, lease)
        return grants

    def acquire(self, job_id: str, token: str, now: float, lease: float, *, claim: bool,
                wait: tuple[str, str] | None) -> bool:
        """Give `job_id`'s lock to `token` if it is free; True if it holds it now.

        `claim`: the delivery may be the first copy of a registered id, so
        it takes the lock over from the placeholder. `wait` is the
        ``(reply_to, corr)`` to answer later, when the lock comes to it
        (FIFO); None when the delivery cannot wait (it already runs).
        """
        lock = self.locks.get(job_id)
        if lock is None or lock["holder"] == token or (claim and lock["holder"] == PLACEHOLDER):
            waiters = lock["waiters"] if lock is not None else []
            self.locks[job_id] = {"holder": token, "until": now + lease, "waiters": waiters}
            return True
        if wait is not None and all(w[0] != token for w in lock["waiters"]):
            lock["waiters"].append([token, *wait])
        return False

    def release(self, job_id: str, token: str, now: float, lease: float) -> list[Grant]:
        """`token` is done with `job_id` (it settled, or it stopped waiting); the next gets it."""
        lock = self.locks.get(job_id)
        if lock is None:
            return []
        if lock["holder"] != token:
            lock["waiters"] = [w for w in lock["waiters"] if w[0] != token]
            return []
        return self._pass_on(job_id, lock, now, lease)

    def _pass_on(self, job_id: str, lock: dict, now: float, lease: float) -> list[Grant]:
        if not lock["waiters"]:
            del self.locks[job_id]
            return []
        token, reply_to, corr = lock["waiters"].pop(0)
        lock["holder"], lock["until"] = token, now + lease
        lock.pop("answers", None)
        lock.pop("answered", None)
        return [Grant(job_id, token, reply_to, corr)]

    def renew(self, pairs: list[tuple[str, str]], now: float, lease: float) -> None:
        """The holders in `pairs` (job id, token) are alive: their locks last `lease` s more."""
        for job_id, token in pairs:
            lock = self.locks.get(job_id)
            if lock is not None and lock["holder"] == token:
                lock["until"] = now + lease

    def expire(self, now: float, lease: float) -> tuple[list[Grant], list[tuple[str, str]]]:
        """Free the locks whose holder stopped renewing (or whose grace ran out).

        Returns the grants to answer and the ``(job id, holder)`` expired.
        """
        grants: list[Grant] = []
        expired = []
        for job_id, lock in list(self.locks.items()):
            if lock["until"] <= now:
                expired.append((job_id, lock["holder"]))
                grants += self._pass_on(job_id, lock, now, lease)
        return grants, expired

    def forget(self, now: float) -> None:
        """Forget the registered ids whose time is up (every save does)."""
        for job_id in [j for j, until in self.known.items() if until <= now]:
            del self.known[job_id]

    def next_expiry(self) -> float | None:
        """When the next lock runs out (epoch s), None when none is held."""
        return min((lock["until"] for lock in self.locks.values()), default=None)
