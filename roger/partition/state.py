"""A partition's global state, as its coordinator keeps it: plain data and pure operations.

The coordinator (`roger.partition.coordinator`) is the only writer; it
saves the state through the persister after every change. No I/O here, and
the time is always passed in, so every rule can be tested without a broker
or a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from roger.partition.twin_locks import TwinLocks

__all__ = ["CANCELLED_TTL", "State"]

CANCELLED_TTL = 24 * 3600.0  # seconds a cancelled id is remembered (at least)
DUE_SLACK = 60.0  # a cancel outlives the last due time by this much: delivery takes hops

# Delayed jobs are counted per queue in buckets of due time, never one by
# one: a million delayed jobs cost a coordinator a few thousand numbers at
# most. A bucket is as fine as its distance allows: (up to this far ahead,
# this wide), in seconds; a job counts as delayed until its bucket's end.
_BUCKETS = ((3600, 1), (86400, 60), (30 * 86400, 3600), (math.inf, 86400))


@dataclass
class State:
    """What a partition's coordinator knows. Plain data: it is what gets persisted."""

    queue_keys: dict[str, str] = field(default_factory=dict)  # key -> job id
    exec_holders: dict[str, str] = field(default_factory=dict)  # key -> job id running/granted
    exec_waiting: dict[str, int] = field(default_factory=dict)  # key -> parked jobs
    cancelled: dict[str, float] = field(default_factory=dict)  # job id -> forget after
    paused: set[str] = field(default_factory=set)
    claimed_at: dict[str, float] = field(default_factory=dict)  # queue key -> when (epoch s)
    # queue -> {end of a due-time bucket (epoch s): delayed jobs due in it}
    delayed: dict[str, dict[int, int]] = field(default_factory=dict)
    # periodic entry name -> {"covered": epoch s, "last": epoch s or None}
    # (see roger.partition.periodic)
    periodic: dict[str, dict] = field(default_factory=dict)
    twins: TwinLocks = field(default_factory=TwinLocks)  # see roger.partition.twin_locks

    def to_dict(self) -> dict:
        return {"queue_keys": self.queue_keys, "exec_holders": self.exec_holders,
                "exec_waiting": self.exec_waiting, "cancelled": self.cancelled,
                "paused": sorted(self.paused), "claimed_at": self.claimed_at,
                "delayed": {q: {str(end): n for end, n in buckets.items()}
                            for q, buckets in self.delayed.items()},
                "periodic": self.periodic, "twins": self.twins.to_dict()}

    @classmethod
    def from_dict(cls, data: dict | None, now: float) -> State:
        """The state `to_dict` saved; its keys without a claim time count from `now`.

        State saved before keys had a time to live has none: such keys live
        one `queue_key_ttl` from the moment a coordinator loads them.
        """
        data = data or {}
        queue_keys = dict(data.get("queue_keys", {}))
        claimed_at = data.get("claimed_at", {})
        delayed = {q: {int(end): int(n) for end, n in buckets.items()}
                   for q, buckets in data.get("delayed", {}).items()}
        return cls(queue_keys, dict(data.get("exec_holders", {})),
                   dict(data.get("exec_waiting", {})), dict(data.get("cancelled", {})),
                   set(data.get("paused", [])),
                   {key: float(claimed_at.get(key, now)) for key in queue_keys}, delayed,
                   {name: dict(record) for name, record in data.get("periodic", {}).items()},
                   TwinLocks.from_dict(data.get("twins")))

    # ---- queue keys

    def claim(self, pairs: list[tuple[str, str]], now: float,
              until: float | None = None) -> list[str]:
        """Claim every key for its job, or none: returns the keys held by other jobs.

        A job claiming its own key again (the same record enqueued again)
        holds it from `now` on. Delayed jobs hold theirs from their due time
        `until` on (epoch s): `queue_key_ttl` counts from when they can run.
        """
        taken = [k for k, job_id in pairs if self.queue_keys.get(k, job_id) != job_id]
        seen: dict[str, str] = {}
        for k, job_id in pairs:  # two jobs of one batch with the same key
            if seen.setdefault(k, job_id) != job_id and k not in taken:
                taken.append(k)
        if not taken:
            since = now if until is None else max(now, until)
            self.queue_keys.update(pairs)
            self.claimed_at.update((k, since) for k, _ in pairs)
        return taken

    def release(self, key: str, job_id: str) -> bool:
        """Free `key` if `job_id` holds it (a stale release never frees a newer claim)."""
        if self.queue_keys.get(key) == job_id:
            del self.queue_keys[key]
            self.claimed_at.pop(key, None)
            return True
        return False

    def release_job(self, job_id: str) -> list[str]:
        """Free the keys `job_id` holds; returns them."""
        # A scan: only cancel needs it, and keys are kept by key, not by job.
        keys = [k for k, holder in self.queue_keys.items() if holder == job_id]
        for k in keys:
            self.release(k, job_id)
        return keys

    def expire_keys(self, before: float, keys: Iterable[str] | None = None
                    ) -> list[tuple[str, str]]:
        """Free the keys (all, or those in `keys`) claimed before `before`.

        Returns each freed key with the job that held it.
        """
        candidates = self.claimed_at if keys is None else set(keys) & self.claimed_at.keys()
        old = [k for k in candidates if self.claimed_at[k] < before]
        expired = [(k, self.queue_keys[k]) for k in old]
        for k, job_id in expired:
            self.release(k, job_id)
        return expired

    # ---- execution keys

    def acquire(self, key: str, job_id: str) -> bool:
        holder = self.exec_holders.get(key)
        if holder is None or holder == job_id:
            self.exec_holders[key] = job_id
            return True
        return False

    def release_exec(self, key: str, job_id: str) -> bool:
        """True when the key became free (the caller then hands it to a parked job)."""
        if self.exec_holders.get(key) != job_id:
            return False
        del self.exec_holders[key]
        return True

    # ---- cancellation and pauses

    def cancel(self, job_id: str, now: float) -> float:
        """Remember `job_id` as cancelled; returns until when (epoch s).

        24 hours, or until the partition's last delayed job is due: the
        job may be one of them, and its id is all a cancel knows.
        """
        until = max(now + CANCELLED_TTL, self.last_due() + DUE_SLACK)
        self.cancelled[job_id] = until
        return until

    def expire(self, now: float) -> bool:
        old = [j for j, until in self.cancelled.items() if until <= now]
        for j in old:
            del self.cancelled[j]
        self.expire_delayed(now)
        self.twins.forget(now)
        return bool(old)

    # ---- delayed jobs

    def add_delayed(self, counts: dict[str, int], due: float, now: float) -> None:
        """Count `counts` (queue -> jobs) delayed until `due` (epoch s)."""
        ahead = due - now
        width = next(w for limit, w in _BUCKETS if ahead <= limit)
        end = math.ceil(due / width) * width
        for queue, n in counts.items():
            buckets = self.delayed.setdefault(queue, {})
            buckets[end] = buckets.get(end, 0) + int(n)

    def expire_delayed(self, now: float) -> None:
        """Forget the buckets whose jobs are all due: they are in their queues now."""
        for queue in list(self.delayed):
            buckets = self.delayed[queue]
            for end in [e for e in buckets if e <= now]:
                del buckets[end]
            if not buckets:
                del self.delayed[queue]

    def delayed_counts(self, now: float) -> dict[str, int]:
        """Delayed jobs per queue that are not due yet (cancelled ones included)."""
        self.expire_delayed(now)
        return {queue: sum(buckets.values()) for queue, buckets in self.delayed.items()}

    def last_due(self) -> float:
        """When the partition's last delayed job is due (epoch s), 0 if none is."""
        return max((max(b) for b in self.delayed.values() if b), default=0.0)
