"""The cluster as the status page shows it: one JSON-ready dict, built from `roger.info`.

`Snapshots.get()` gathers every live node's status (`roger.info.nodes`), the
depths of each queue and its buried and rejected queues
(`roger.info.queue_depths`) and the periodic jobs (`roger.info.periodic`,
where this version has it), and reshapes them per partition and queue.
A gathering is shared by the requests of the next `CACHE_SECONDS`: many
open pages cost the cluster one gathering per interval, not one each.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from roger import info
from roger.settings import Settings
from roger.web.rates import RateWindow, job_counters, per_queue

__all__ = ["Snapshots", "build"]

log = logging.getLogger("roger.web")

CACHE_SECONDS = 1.0
GATHER_TIMEOUT = 1.0  # per cluster-wide call: nodes that answer later are left out


class Snapshots:
    """Cached snapshots of the cluster, and the rate window their counters feed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rates = RateWindow()
        self._lock = threading.Lock()  # one gathering at a time; the others wait for it
        self._last: tuple[float, dict] | None = None

    def get(self) -> dict:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < CACHE_SECONDS:
                return self._last[1]
            snapshot = self._gather()
            self._last = (time.monotonic(), snapshot)
            return snapshot

    def forget(self) -> None:
        """Drop the cached snapshot: an action changed the cluster."""
        with self._lock:
            self._last = None

    def _gather(self) -> dict:
        nodes = info.nodes(settings=self.settings, timeout=GATHER_TIMEOUT)
        depths: dict[tuple[str, str], dict] = {}
        for partition, queue in sorted(_queues(nodes)):
            try:
                depths[(partition, queue)] = info.queue_depths(partition, queue,
                                                               settings=self.settings)
            except Exception as e:  # the broker is away: show the rest, ask no more
                log.warning("status page: no queue depths from %s/%s on: %s",
                            partition, queue, e)
                break
        self.rates.add(job_counters(nodes, depths))
        return build(nodes, depths, per_queue(self.rates.rates()), self.rates.span(),
                     _periodic(self.settings), self.settings)


def _queues(nodes: dict[str, dict]) -> set[tuple[str, str]]:
    found = set()
    for status in nodes.values():
        for partition, entry in (status.get("running") or {}).items():
            found.update((partition, q) for q in (entry.get("queues") or {}))
        for partition, queues in (status.get("waiting") or {}).items():
            found.update((partition, q) for q in queues)
    return found


def _periodic(settings: Settings) -> list[dict] | None:
    """`roger.info.periodic()` as plain dicts; None where this roger has no periodic jobs."""
    periodic = getattr(info, "periodic", None)
    if periodic is None:
        return None
    try:
        try:
            entries = periodic(settings=settings)
        except TypeError:  # a periodic() without a settings argument
            entries = periodic()
    except Exception as e:
        log.warning("status page: cannot list periodic jobs: %s", e)
        return []
    return [_plain(entry) for entry in entries]


def _plain(entry: Any) -> dict:
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        return dataclasses.asdict(entry)
    if isinstance(entry, dict):
        return dict(entry)
    return {k: v for k, v in vars(entry).items() if not k.startswith("_")}


def build(nodes: dict[str, dict], depths: dict[tuple[str, str], dict],
          rates: dict[tuple[str, str], dict[str, float]], rate_span: float,
          periodic: list[dict] | None, settings: Settings) -> dict:
    """The page's view of the cluster (a pure function of what was gathered)."""
    now_ms = int(time.time() * 1000)
    partitions: dict[str, dict] = {}
    running: list[dict] = []
    for node, status in sorted(nodes.items()):
        for name, entry in (status.get("running") or {}).items():
            part = _partition(partitions, name)
            state = "idle" if entry.get("idle") else "running"
            part["nodes"][node] = {"state": state, "pid": entry.get("pid"),
                                   "restarts": entry.get("restarts", 0),
                                   "active": bool((entry.get("coordinator") or {}).get("active"))}
            paused = set((entry.get("coordinator") or {}).get("paused") or ())
            for queue, q in (entry.get("queues") or {}).items():
                if not isinstance(q, dict):
                    continue  # {"error": ...}: a partition that could not answer
                _add_queue(part, node, queue, q, queue in paused)
                running.extend(_running(node, name, queue, q, now_ms))
        for name, queues in (status.get("waiting") or {}).items():
            part = _partition(partitions, name)
            part["nodes"][node] = {"state": "waiting", "pid": None, "restarts": 0,
                                   "active": False}
            for queue, workers in queues.items():
                _queue(part, queue)["workers"] += workers
    for name, part in partitions.items():
        for queue, q in part["queues"].items():
            q.update(depths.get((name, queue)) or {})
            rate = rates.get((name, queue), {})
            q["done_per_second"] = rate.get("done") if rate_span else None
            q["failed_per_second"] = rate.get("failed") if rate_span else None
        part["queues"] = [part["queues"][k] for k in sorted(part["queues"])]
    return {
        "generated_at": now_ms,
        "node": settings.node_name,
        "actions": settings.http_token is not None,
        "nodes": [_node_summary(n, s) for n, s in sorted(nodes.items())],
        "partitions": [partitions[k] for k in sorted(partitions)],
        "running": sorted(running, key=lambda j: j["started_at"] or now_ms),
        "rate_window_seconds": round(rate_span, 1),
        "periodic": periodic,
    }


def _partition(partitions: dict[str, dict], name: str) -> dict:
    return partitions.setdefault(name, {"name": name, "nodes": {}, "queues": {}})


def _queue(part: dict, queue: str) -> dict:
    return part["queues"].setdefault(queue, {
        "name": queue, "workers": 0, "busy": 0, "paused": False, "idle_on": [],
        "consuming_on": [], "held": 0,
    })


def _add_queue(part: dict, node: str, queue: str, status: dict, paused: bool) -> None:
    q = _queue(part, queue)
    q["workers"] += status.get("max_workers") or 0
    q["busy"] += len(status.get("running") or ())
    q["held"] += len(status.get("waiting") or ())
    q["paused"] = bool(q["paused"] or paused or status.get("paused"))
    if status.get("idle"):
        q["idle_on"].append(node)
    elif status.get("consuming"):
        q["consuming_on"].append(node)


def _running(node: str, partition: str, queue: str, status: dict, now_ms: int) -> list[dict]:
    return [{"id": r.get("id"), "name": r.get("name"), "node": node, "partition": partition,
             "queue": queue, "started_at": r.get("started_at"),
             "age_seconds": (now_ms - r["started_at"]) / 1000 if r.get("started_at") else None}
            for r in status.get("running") or ()]


def _node_summary(name: str, status: dict) -> dict:
    running = status.get("running") or {}
    return {"name": name, "pid": status.get("pid"), "partitions": len(running),
            "idle": sorted(p for p, e in running.items() if e.get("idle")),
            "waiting": sorted(status.get("waiting") or {})}
