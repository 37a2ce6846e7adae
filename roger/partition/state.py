"""A partition's global state, as its coordinator keeps it: plain data and pure operations.

The coordinator (`roger.partition.coordinator`) is the only writer; it
saves the state through the persister after every change. No I/O here, so
every rule can be tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CANCELLED_TTL", "State"]

CANCELLED_TTL = 24 * 3600.0  # seconds a cancelled id is remembered


@dataclass
class State:
    """What a partition's coordinator knows. Plain data: it is what gets persisted."""

    queue_keys: dict[str, str] = field(default_factory=dict)  # key -> job id
    exec_holders: dict[str, str] = field(default_factory=dict)  # key -> job id running/granted
    exec_waiting: dict[str, int] = field(default_factory=dict)  # key -> parked jobs
    cancelled: dict[str, float] = field(default_factory=dict)  # job id -> forget after
    paused: set[str] = field(default_factory=set)

    def to_dict(self) -> dict:
        return {"queue_keys": self.queue_keys, "exec_holders": self.exec_holders,
                "exec_waiting": self.exec_waiting, "cancelled": self.cancelled,
                "paused": sorted(self.paused)}

    @classmethod
    def from_dict(cls, data: dict | None) -> State:
        data = data or {}
        return cls(dict(data.get("queue_keys", {})), dict(data.get("exec_holders", {})),
                   dict(data.get("exec_waiting", {})), dict(data.get("cancelled", {})),
                   set(data.get("paused", [])))

    # ---- queue keys

    def claim(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Claim every key for its job, or none: returns the keys held by other jobs."""
        taken = [k for k, job_id in pairs if self.queue_keys.get(k, job_id) != job_id]
        seen: dict[str, str] = {}
        for k, job_id in pairs:  # two jobs of one batch with the same key
            if seen.setdefault(k, job_id) != job_id and k not in taken:
                taken.append(k)
        if not taken:
            self.queue_keys.update(pairs)
        return taken

    def release(self, key: str, job_id: str) -> bool:
        if self.queue_keys.get(key) == job_id:
            del self.queue_keys[key]
            return True
        return False

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

    def cancel(self, job_id: str, now: float) -> None:
        self.cancelled[job_id] = now + CANCELLED_TTL

    def expire(self, now: float) -> bool:
        old = [j for j, until in self.cancelled.items() if until <= now]
        for j in old:
            del self.cancelled[j]
        return bool(old)
