"""The root's record of idle queues and dormant partitions, and its line to the watcher.

With `idle_after` > 0 a queue is *idle* when its consumer gave it back (or
never started), and a partition is *dormant* when all of its queues are
idle: it has no process at all, the watcher hosts its coordinator. The
root decides; this module keeps the record and tells the watcher
(`roger.node.watcher`) what to watch after each decision. `plan` is shared
with the watcher's spec, so a watcher that restarts starts from the
current record.
"""

from __future__ import annotations

import logging
from typing import Any

from roger.node.watcher import CHILD_ID, Watch, WatcherStatus, watcher_spec
from roger.partition.supervisor import idle_status
from roger.settings import Settings
from supervision import ChildSpec, Supervisor

__all__ = ["IdleQueues"]

log = logging.getLogger("roger.node")

WATCH_TIMEOUT = 30.0  # subscribing a partition's queues: a few declarations
STATUS_TIMEOUT = 30.0  # a passive declaration per idle queue


class IdleQueues:
    def __init__(self, settings: Settings, partitions: dict[str, dict[str, int]]) -> None:
        self.enabled = settings.idle_after > 0
        self.settings = settings
        self.partitions = partitions  # the root's own dict
        self.idle: dict[str, set[str]] = {}  # partition -> queues with no consumer running
        self.dormant: set[str] = set()  # partitions with no process: every queue idle
        self.plan: dict[str, Watch] = {}  # partition -> what the watcher watches
        self.sup: Supervisor | None = None  # the root's, once built
        if self.enabled:
            for name in partitions:  # a node starts with everything asleep
                self.fall_asleep(name, call=False)

    def __repr__(self) -> str:
        return (f"<IdleQueues: {sum(map(len, self.idle.values()))} idle queues, "
                f"{len(self.dormant)} dormant partitions>")

    def spec(self) -> ChildSpec | None:
        """The watcher's spec, when idle queues are enabled."""
        return watcher_spec(self.settings, self.plan) if self.enabled else None

    # -------------------------------------------------------------- the record

    def fall_asleep(self, name: str, call: bool = True) -> None:
        """Every queue of `name` idle, no process: the watcher takes over."""
        self.idle[name] = set(self.partitions[name])
        self.dormant.add(name)
        self.tell(name, call)

    def queue_fell_idle(self, name: str, queue: str) -> bool:
        """Record `queue` as idle; True when the whole partition is idle now."""
        self.idle.setdefault(name, set()).add(queue)
        return self.all_idle(name)

    def all_idle(self, name: str) -> bool:
        return self.enabled and set(self.partitions[name]) <= self.idle.get(name, set())

    def wake(self, name: str, queue: str) -> bool:
        """Record `queue` as awake; False when it was not idle (a stale wake)."""
        queues = self.idle.get(name)
        if queues is None or queue not in queues or name not in self.partitions:
            return False
        queues.discard(queue)
        return True

    def wake_all(self, name: str) -> None:
        self.idle.pop(name, None)
        self.dormant.discard(name)

    def set_idle(self, name: str, queues: set[str]) -> None:
        """What a partition supervisor reported as idle (after a reconfiguration)."""
        self.idle[name] = set(queues) & set(self.partitions[name])

    def forget(self, name: str) -> None:
        self.idle.pop(name, None)
        self.dormant.discard(name)
        self.tell(name)

    def idle_queues(self, name: str) -> set[str]:
        return set(self.idle.get(name, ()))

    # ----------------------------------------------------------- the watcher

    def tell(self, name: str, call: bool = True) -> None:
        """Bring the watcher's plan for `name` in line with the record."""
        queues = self.partitions.get(name, {})
        # A queue with 0 workers consumes nothing: no message may wake it.
        watch = Watch(name, tuple(sorted(q for q in self.idle.get(name, ())
                                         if queues.get(q, 0) > 0)),
                      name in self.dormant)
        if watch.queues or watch.coordinator:
            self.plan[name] = watch
        else:
            self.plan.pop(name, None)
        if call and self.enabled:
            self._call(watch, WATCH_TIMEOUT)

    def view(self) -> dict[str, Any]:
        """The watcher's status, or {} when it cannot answer."""
        if not self.enabled or not self.plan:
            return {}
        return self._call(WatcherStatus(), STATUS_TIMEOUT) or {}

    def _call(self, payload: Any, timeout: float) -> Any:
        assert self.sup is not None
        if not any(c.id == CHILD_ID and c.state == "running" for c in self.sup.which_children()):
            return None  # it reads the plan when it starts
        try:
            return self.sup.call_child(CHILD_ID, payload, timeout)
        except Exception as e:  # a watcher that restarts reads the plan again
            log.warning("the watcher did not take %r: %s", payload, e)
            return None

    # ------------------------------------------------------------------ status

    def fill(self, name: str, entry: dict, view: dict[str, Any]) -> None:
        """Complete a partition's status entry with what the watcher knows of its idle queues."""
        seen = view.get(name, {})
        queues = entry.setdefault("queues", {})
        for queue in self.idle.get(name, ()):
            info = queues.setdefault(queue, idle_status(queue, self.partitions[name][queue]))
            info.update(seen.get("queues", {}).get(queue, {}))
            info.setdefault("paused", None)
        if name in self.dormant:
            entry["idle"] = True
            entry["coordinator"] = seen.get("coordinator") or {}
