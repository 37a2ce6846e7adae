"""The root supervisor's roger side: which partitions should run, which wait, and requests.

The root supervisor's children are the node's own processes (the control
server and the system process; see `roger.node.node`) and the partition
supervisors. They are
`temporary` children and the root restarts them itself: a partition that
crashes, or cannot start at all (broker down, restart intensity exceeded),
is listed as *waiting* and retried with a capped backoff, and never counts
against the root's own restart intensity. So one partition's trouble never
takes the node, or another partition, down.

The node's requests (`StartPartition`, `ReconfigurePartition`,
`StopPartition`, `RestartPartition`, `NodeStatus`) are defined here beside
the handler that answers them, each with a function that sends it; the
control server, the system process and `roger.Node` call those.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from roger.node.idle import IdleQueues
from roger.node.watcher import Wake
from roger.partition import supervisor as partition_supervisor
from roger.partition.supervisor import QueueIdle, run_partition, start_timeout
from roger.settings import Settings, check_partition_name, check_queues
from supervision import ChildSpec, Event, Supervisor

__all__ = ["NodeStatus", "ReconfigurePartition", "RestartPartition", "Root", "StartPartition",
           "StopPartition"]

log = logging.getLogger("roger.node")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
STABLE_AFTER = 60.0  # a partition up this long starts its backoff afresh
CALL_TIMEOUT = 120.0
STATUS_TIMEOUT = 10.0
START_BATCH = 16  # partitions started side by side at most


# ----------------------------------------------------------------- the requests


class Caller(Protocol):
    """Whatever reaches the root: a `SupervisorAPI`, or a child's `supervision.Link`."""

    def call(self, payload: Any, timeout: float | None = ...) -> Any: ...


@dataclass(frozen=True)
class StartPartition:
    name: str
    queues: dict[str, int]


@dataclass(frozen=True)
class ReconfigurePartition:
    name: str
    queues: dict[str, int]


@dataclass(frozen=True)
class StopPartition:
    name: str


@dataclass(frozen=True)
class RestartPartition:
    name: str


@dataclass(frozen=True)
class NodeStatus:
    pass


def start_partition(root: Caller, name: str, queues: dict[str, int],
                    timeout: float = CALL_TIMEOUT) -> dict:
    """Start serving a partition; answers the node's status once its consumers subscribed."""
    return root.call(StartPartition(name, dict(queues)), timeout)


def reconfigure_partition(root: Caller, name: str, queues: dict[str, int],
                          timeout: float = CALL_TIMEOUT) -> dict:
    return root.call(ReconfigurePartition(name, dict(queues)), timeout)


def stop_partition(root: Caller, name: str, timeout: float = CALL_TIMEOUT) -> dict:
    return root.call(StopPartition(name), timeout)


def restart_partition(root: Caller, name: str, timeout: float = CALL_TIMEOUT) -> dict:
    return root.call(RestartPartition(name), timeout)


def node_status(root: Caller, timeout: float = STATUS_TIMEOUT) -> dict:
    return root.call(NodeStatus(), timeout)


# --------------------------------------------------------------------- the root


class Root:
    """The root supervisor's roger side: desired partitions, waiting ones, requests.

    `children` are the node's own processes, started first (see `roger.node.node`).
    """

    def __init__(self, settings: Settings, children: tuple[ChildSpec, ...] = ()) -> None:
        self.settings = settings
        # Shared with the partition specs: a restarted partition gets its
        # current queues, not the ones it first started with.
        self.partitions: dict[str, dict[str, int]] = {
            name: dict(queues) for name, queues in settings.partitions.items()
        }
        self.waiting: dict[str, int] = {}  # partition -> failed attempts
        self.started_at: dict[str, float] = {}
        # partition -> times its supervisor exited on its own (each one is
        # started again, after waiting): the partitions' restart counts.
        self.restarts: dict[str, int] = {}
        self.idle = IdleQueues(settings, self.partitions)
        # What children report (queues falling idle, messages waking them),
        # handled from the loop's timers: never inside another call.
        self.reports: deque[QueueIdle | Wake] = deque()
        watcher = self.idle.spec()
        self.sup = Supervisor(
            (*children, *([watcher] if watcher else [])),
            name=f"roger node {settings.node_name}", intensity=10, period=10.0,
            on_event=self._on_event, handler=self._handle, on_start=self._start_all,
        )
        self.idle.sup = self.sup

    def __repr__(self) -> str:
        return (f"<Root {self.settings.node_name!r}: partitions {sorted(self.partitions)}, "
                f"waiting {sorted(self.waiting)}, {self.idle!r}>")

    def spec(self, name: str) -> ChildSpec:
        s = self.settings
        awake = len(set(self.partitions[name]) - self.idle.idle_queues(name))
        return ChildSpec(
            name, run_partition, args=(name, self.partitions, s, self.idle.idle),
            type="supervisor", restart="temporary",
            shutdown=s.shutdown_timeout + 10.0,
            # The coordinator and each consumer start one after the other.
            start_timeout=(awake + 1) * start_timeout(s) + 5.0,
        )

    def start_timeout(self) -> float:
        """How long starting the node may take: its awake partitions, and its watcher."""
        watcher = self.idle.spec()
        return (sum(self.spec(n).start_timeout for n in self.partitions
                    if n not in self.idle.dormant)
                + (watcher.start_timeout if watcher is not None else 0.0))

    # ------------------------------------------------------------ partitions

    def _start_all(self, sup: Supervisor) -> None:
        for name in list(self.partitions):
            self._try_start(name)

    def _try_start(self, name: str) -> bool:
        return name in self._try_start_all([name])

    def _try_start_all(self, names: list[str]) -> set[str]:
        """Start these partitions side by side; those that fail wait. Answers the started.

        A partition's start waits on RabbitMQ (connections, subscriptions,
        the coordinator's hand-over), so starts overlap well; they go in
        batches of `START_BATCH` so a burst of wakes does not fork more at
        once than the machine can start within their timeouts.
        """
        names = [n for n in dict.fromkeys(names)
                 if n in self.partitions and n not in self.idle.dormant
                 and not self._running(n) and not self.sup.stopping]
        started: set[str] = set()
        for i in range(0, len(names), START_BATCH):
            batch = names[i:i + START_BATCH]
            answer = self.sup.start_children([self.spec(n) for n in batch])
            for name in batch:
                if answer[name] is not None:
                    self._wait(name, answer[name])
                    continue
                self.waiting.pop(name, None)
                self.started_at[name] = time.monotonic()
                started.add(name)
        return started

    def _wait(self, name: str, why: str) -> None:
        attempts = self.waiting.get(name, 0)
        if time.monotonic() - self.started_at.get(name, 0.0) > STABLE_AFTER:
            attempts = 0
        self.started_at.pop(name, None)
        self.waiting[name] = attempts + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempts)
        log.warning("partition %s is waiting (%s); retrying in %.1f s", name, why, delay)
        self.sup.call_later(delay, lambda: self._try_start(name))

    def _running(self, name: str) -> bool:
        return any(c.id == name and c.state == "running" for c in self.sup.which_children())

    def _on_event(self, event: Event) -> None:
        if event.kind == "message" and isinstance(event.payload, (QueueIdle, Wake)):
            self.reports.append(event.payload)
            self.sup.call_later(0, self._handle_reports)
        elif (event.kind == "exited" and event.child_id in self.partitions
              and not self.sup.stopping):
            self.restarts[event.child_id] = self.restarts.get(event.child_id, 0) + 1
            self._wait(event.child_id, f"its supervisor exited: {event.reason}")

    # ----------------------------------------------------------- idle queues

    def _handle_reports(self) -> None:
        woken: list[str] = []  # dormant partitions to start, side by side
        while self.reports and not self.sup.stopping:
            report = self.reports.popleft()
            if isinstance(report, Wake):
                self._wake(report.partition, report.queue, woken)
            else:
                self._queue_idle(report.partition, report.queue)
        if woken:
            self._try_start_all(woken)
            for name in woken:
                self.idle.tell(name)  # after the start: the partition's coordinator is up

    def _wake(self, name: str, queue: str, woken: list[str]) -> None:
        """A message arrived in an idle queue: start its consumer (or add its partition
        to `woken`, to start)."""
        if not self.idle.wake(name, queue) or name in woken:
            return  # awake already, stopped meanwhile, or it starts with its partition
        if name in self.idle.dormant:
            self.idle.dormant.discard(name)
            woken.append(name)
            return
        if self._running(name):
            try:
                partition_supervisor.wake(self.sup, name, queue, CALL_TIMEOUT)
            except Exception as e:  # the partition is dying: it restarts with the queue awake
                log.warning("[%s/%s] could not wake the queue: %s", name, queue, e)
        self.idle.tell(name)

    def _queue_idle(self, name: str, queue: str) -> None:
        if name not in self.partitions or not self._running(name):
            return
        if self.idle.queue_fell_idle(name, queue):
            self._fall_asleep(name)
        else:
            self.idle.tell(name)

    def _fall_asleep(self, name: str) -> None:
        """Every queue is idle: the watcher takes over before the partition goes."""
        log.info("partition %s is idle: stopping its processes; the watcher keeps it", name)
        self.idle.fall_asleep(name)
        if self._running(name):
            self.sup.terminate_child(name)

    # --------------------------------------------------------------- requests

    def _handle(self, sup: Supervisor, payload: Any) -> Any:
        match payload:
            case StartPartition(name, queues):
                return self.start_partition(name, queues)
            case ReconfigurePartition(name, queues):
                return self.reconfigure_partition(name, queues)
            case StopPartition(name):
                return self.stop_partition(name)
            case RestartPartition(name):
                return self.restart_partition(name)
            case NodeStatus():
                return self.status()
        raise ValueError(f"unknown node request {payload!r}")

    def start_partition(self, name: str, queues: dict[str, int]) -> dict:
        check_partition_name(name)  # also keeps it apart from "roger.control" & co.
        if name in self.partitions:
            raise ValueError(f"partition {name!r} is already configured on this node")
        self.partitions[name] = check_queues(queues)
        if self.idle.enabled:
            self.idle.fall_asleep(name)  # its queues wake as messages come
        elif not self._try_start(name):
            log.warning("partition %s did not start; it is waiting", name)
        return self.status()

    def reconfigure_partition(self, name: str, queues: dict[str, int]) -> dict:
        self._known(name)
        self.partitions[name] = check_queues(queues)
        if name in self.idle.dormant:
            self.idle.fall_asleep(name)  # the new queues are watched too
        elif self._running(name):
            answer = partition_supervisor.reconfigure(self.sup, name, self.partitions[name],
                                                      CALL_TIMEOUT)
            self.idle.set_idle(name, set(answer.get("idle", ())))
            if self.idle.all_idle(name):
                self._fall_asleep(name)
            else:
                self.idle.tell(name)
        return self.status()

    def stop_partition(self, name: str) -> dict:
        self._known(name)
        del self.partitions[name]
        self.waiting.pop(name, None)
        self.restarts.pop(name, None)
        if self._running(name):
            self.sup.terminate_child(name)
        self.idle.forget(name)
        return self.status()

    def restart_partition(self, name: str) -> dict:
        self._known(name)
        if self._running(name):
            self.sup.terminate_child(name)
        self.idle.wake_all(name)  # every queue starts awake, and may fall idle again
        self._try_start(name)
        self.idle.tell(name)
        return self.status()

    def status(self) -> dict:
        running: dict[str, Any] = {}
        view = self.idle.view()
        for child in self.sup.which_children():
            if child.state != "running" or child.id not in self.partitions:
                continue  # the node's own processes (control, system) are not partitions
            try:
                answer = partition_supervisor.status(self.sup, child.id, STATUS_TIMEOUT)
            except Exception as e:
                answer = {"queues": {"error": str(e)}, "coordinator": {}}
            running[child.id] = {"pid": child.pid, "restarts": self.restarts.get(child.id, 0),
                                 **answer}
            self.idle.fill(child.id, running[child.id], view)
        for name in sorted(self.idle.dormant):
            running[name] = {"pid": None, "restarts": self.restarts.get(name, 0)}
            self.idle.fill(name, running[name], view)
        return {
            "node": self.settings.node_name,
            "pid": os.getpid(),
            "running": running,
            "waiting": {n: dict(self.partitions[n]) for n in self.waiting if n in self.partitions},
        }

    def _known(self, name: str) -> None:
        if name not in self.partitions:
            raise ValueError(f"partition {name!r} is not configured on this node")
