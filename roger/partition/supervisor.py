"""The partition supervisor: one process per partition, the parent of its coordinator and consumers.

Its children are the partition's coordinator (`roger.partition.coordinator`)
and one consumer per queue (`roger.partition.consumer`), one_for_one: a
crashing consumer never disturbs its siblings. It answers its node's
requests, `Reconfigure`, `WakeQueue` and `PartitionStatus`, defined here
beside their handler, and tells its node when a queue fell idle
(`QueueIdle`, an event: its consumer exited on its own, with code 0, and is
not restarted; see `roger.partition.consumer`). Its queue dict is shared
with the consumer specs, so a consumer restarted after a reconfiguration
comes back with its current worker count, not the one it first started
with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import supervision
from roger.metrics import QueueReport
from roger.partition import consumer, coordinator
from roger.partition.consumer import run_consumer
from roger.partition.coordinator import run_coordinator
from roger.settings import Settings
from supervision import ChildSpec, Event, Supervisor, SupervisorAPI, SupervisorGone

__all__ = ["PartitionStatus", "QueueIdle", "Reconfigure", "WakeQueue", "idle_status", "reconfigure",
           "run_partition", "status", "wake"]

log = logging.getLogger("roger.partition")

# A consumer that keeps crashing (say, its queue cannot be declared) makes
# its partition give up after this many restarts; the node then lists the
# partition as waiting and retries it with backoff.
INTENSITY, PERIOD = 5, 30.0
STATUS_TIMEOUT = 5.0  # a busy or dying child must not hold up the node's status


def idle_status(queue: str, workers: int) -> dict:
    """The status entry of a queue whose consumer does not run because it is idle."""
    return {"queue": queue, "max_workers": workers, "idle": True, "consuming": False,
            "pid": None, "workers": [], "running": []}


def start_timeout(settings: Settings) -> float:
    """How long one AMQP child may take to connect, declare and subscribe."""
    return 2 * settings.connect_timeout + 10.0


# ---------------------------------------------------------- requests from the node


@dataclass(frozen=True)
class Reconfigure:
    """Call: make the partition's queues exactly `queues`; answers its status."""

    queues: dict[str, int]


@dataclass(frozen=True)
class WakeQueue:
    """Call: start the consumer of an idle queue again."""

    queue: str


@dataclass(frozen=True)
class QueueIdle:
    """Event to the node: `queue`'s consumer gave the queue back and exited."""

    partition: str
    queue: str


@dataclass(frozen=True)
class PartitionStatus:
    """Call: ``{"queues": {queue: consumer status}, "coordinator": {...}}``."""


def reconfigure(sup: SupervisorAPI, partition: str, queues: dict[str, int],
                timeout: float) -> dict:
    return sup.call_child(partition, Reconfigure(dict(queues)), timeout)


def status(sup: SupervisorAPI, partition: str, timeout: float) -> dict:
    return sup.call_child(partition, PartitionStatus(), timeout)


def wake(sup: SupervisorAPI, partition: str, queue: str, timeout: float) -> None:
    sup.call_child(partition, WakeQueue(queue), timeout)


# -------------------------------------------------------------------- the process


def consumer_spec(partition: str, queue: str, queues: dict[str, int], settings: Settings
                  ) -> ChildSpec:
    return ChildSpec(
        queue, _start_consumer, args=(partition, queue, queues, settings),
        # A consumer that exits with code 0 gave its idle queue back: transient
        # children are restarted only after an abnormal exit.
        restart="transient" if settings.idle_after > 0 else "permanent",
        # The consumer waits up to shutdown_timeout for its jobs by itself.
        shutdown=settings.shutdown_timeout + 5.0,
        notify_ready=True,
        start_timeout=start_timeout(settings),
    )


def coordinator_spec(partition: str, settings: Settings) -> ChildSpec:
    # First child: on a fresh cluster, this node's coordinator is subscribed
    # (and so can answer) before its consumers ask for the partition's state.
    return ChildSpec(coordinator.CHILD_ID, run_coordinator, args=(partition, settings),
                     notify_ready=True, start_timeout=start_timeout(settings), shutdown=5.0)


def _start_consumer(partition: str, queue: str, queues: dict[str, int],
                    settings: Settings) -> None:
    run_consumer(partition, queue, queues[queue], settings)


def run_partition(name: str, partitions: dict[str, dict[str, int]], settings: Settings,
                  idle: dict[str, set[str]] | None = None) -> None:
    """Partition supervisor process main; the queues in ``idle[name]`` start idle."""
    idle_queues = set((idle or {}).get(name, ()))
    PartitionSupervisor(name, dict(partitions[name]), settings, idle_queues).sup.run()


class PartitionSupervisor:
    """The roger side of a partition's `Supervisor`: its queues and its requests."""

    def __init__(self, name: str, queues: dict[str, int], settings: Settings,
                 idle: set[str] | None = None) -> None:
        self.name, self.queues, self.settings = name, queues, settings
        self.idle = set(idle or ()) & set(queues)  # queues whose consumer is not running
        self.sup = Supervisor(
            [coordinator_spec(name, settings),
             *(consumer_spec(name, q, queues, settings) for q in queues if q not in self.idle)],
            strategy="one_for_one", intensity=INTENSITY, period=PERIOD,
            name=f"partition {name}", handler=self._handle, on_shutdown=self._drain_all,
            on_event=self._on_event,
        )

    def __repr__(self) -> str:
        return f"<PartitionSupervisor {self.name!r} queues={self.queues} idle={self.idle}>"

    def _handle(self, sup: Supervisor, payload: Any) -> Any:
        if isinstance(payload, Reconfigure):
            return self.reconfigure(payload.queues)
        if isinstance(payload, WakeQueue):
            return self.wake(payload.queue)
        if isinstance(payload, PartitionStatus):
            return self.status()
        raise ValueError(f"partition {self.name}: unknown request {payload!r}")

    def _on_event(self, event: Event) -> None:
        if event.kind == "message" and isinstance(event.payload, QueueReport):
            self._up(event.payload)  # a consumer's counts, for the root's totals
            return
        if (event.kind in ("exited", "terminated") and event.child_id in self.queues
                and self.settings.counts_jobs):
            # Its gauges go to zero even if it died without its last report.
            self._up(QueueReport(self.name, event.child_id))
        if (event.kind == "exited" and event.exitcode == 0 and event.child_id in self.queues
                and not self.sup.stopping):
            self.idle.add(event.child_id)
            supervision.parent().event(QueueIdle(self.name, event.child_id))

    @staticmethod
    def _up(payload: Any) -> None:
        if supervision.is_supervised():
            try:
                supervision.parent().event(payload)
            except SupervisorGone:
                pass  # the node is going: nobody reads the counts any more

    def wake(self, queue: str) -> None:
        """Start an idle queue's consumer (its spec is kept while it is idle)."""
        if queue not in self.idle or queue not in self.queues:
            return
        self.idle.discard(queue)
        if any(c.id == queue for c in self.sup.which_children()):
            self.sup.restart_child(queue)
        else:
            self.sup.start_child(consumer_spec(self.name, queue, self.queues, self.settings))
        log.info("[%s] queue %s woke up", self.name, queue)

    def _drain_all(self, sup: Supervisor) -> None:
        # Consumers are stopped one by one (reverse order), but they should all
        # stop consuming and start waiting for their jobs at the same moment.
        for child in sup.which_children():
            if child.state == "running" and child.id in self.queues:
                try:
                    consumer.drain(sup, child.id)
                except SupervisorGone:
                    pass

    def reconfigure(self, wanted: dict[str, int]) -> dict:
        sup, queues = self.sup, self.queues
        known = {c.id for c in sup.which_children()}
        for queue in [q for q in queues if q not in wanted]:
            if queue in known:
                sup.terminate_child(queue)
                sup.delete_child(queue)
            del queues[queue]
            self.idle.discard(queue)
            log.info("[%s] queue %s stopped", self.name, queue)
        for queue, workers in wanted.items():
            if queue not in queues:
                queues[queue] = workers
                sup.start_child(consumer_spec(self.name, queue, queues, self.settings))
                log.info("[%s] queue %s started with %d workers", self.name, queue, workers)
            elif queues[queue] != workers:
                queues[queue] = workers  # an idle queue's consumer starts with it
                if queue not in self.idle:
                    consumer.set_workers(sup, queue, workers)
        return self.status()

    def status(self) -> dict:
        """The queues' consumer statuses, and the coordinator's."""
        out: dict[str, Any] = {}
        coordinator_status: dict[str, Any] = {}
        coordinator_pid = None
        for child in self.sup.which_children():
            if child.id == coordinator.CHILD_ID:
                coordinator_status = self._ask(child, lambda: coordinator.status(
                    self.sup, STATUS_TIMEOUT))
                coordinator_pid = child.pid
                continue
            if child.id not in self.queues or child.id in self.idle:
                continue
            if child.state != "running":
                info = {"queue": child.id, "max_workers": self.queues.get(child.id),
                        "consuming": False, "pid": None}
            else:
                info = self._ask(child, lambda c=child: consumer.status(
                    self.sup, c.id, STATUS_TIMEOUT))
                info.setdefault("queue", child.id)
                info.setdefault("max_workers", self.queues.get(child.id))
            info["restarts"] = child.restarts
            out[child.id] = info
        for queue in self.idle:  # the node fills in what its watcher knows
            out[queue] = idle_status(queue, self.queues[queue])
        return {"queues": out, "coordinator": coordinator_status, "idle": sorted(self.idle),
                "coordinator_pid": coordinator_pid}

    @staticmethod
    def _ask(child: Any, call: Any) -> dict:
        if child.state != "running":
            return {"pid": None}
        try:
            return dict(call())
        except Exception as e:  # a busy or dying child must not break status
            return {"error": str(e)}
