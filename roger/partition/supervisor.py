"""A partition: one supervisor process with one consumer per queue.

Its children are the partition's coordinator (see `roger.global_state`)
and the queues' consumers (one_for_one: a crashing consumer never disturbs
its siblings). It answers its node's requests to reconfigure
its queues and to report status. Its queue dict is shared with the consumer
specs, so a consumer restarted after a reconfiguration comes back with its
current worker count, not the one it first started with.
"""

from __future__ import annotations

import logging
from typing import Any

from roger.partition.consumer import run_consumer
from roger.partition.coordinator import run_coordinator
from supervision import ChildSpec, Supervisor, SupervisorGone

log = logging.getLogger("roger.partition")

COORDINATOR = "roger.global"  # queue names have no dot: no clash with a consumer's id

# A consumer that keeps crashing (say, its queue cannot be declared) makes
# its partition give up after this many restarts; the node then lists the
# partition as waiting and retries it with backoff.
INTENSITY, PERIOD = 5, 30.0


def consumer_spec(partition: str, queue: str, queues: dict[str, int], settings: Any
                  ) -> ChildSpec:
    return ChildSpec(
        queue, _start_consumer, args=(partition, queue, queues, settings),
        restart="permanent",
        # The consumer waits up to shutdown_timeout for its jobs by itself.
        shutdown=settings.shutdown_timeout + 5.0,
        notify_ready=True,
        start_timeout=2 * settings.connect_timeout + 10.0,
    )


def coordinator_spec(partition: str, settings: Any) -> ChildSpec:
    # First child: on a fresh cluster, this node's coordinator is subscribed
    # (and so can answer) before its consumers ask for the partition's state.
    return ChildSpec(COORDINATOR, run_coordinator, args=(partition, settings),
                     notify_ready=True, start_timeout=2 * settings.connect_timeout + 10.0,
                     shutdown=5.0)


def _start_consumer(partition: str, queue: str, queues: dict[str, int], settings: Any) -> None:
    run_consumer(partition, queue, queues[queue], settings)


def run_partition(name: str, partitions: dict[str, dict[str, int]], settings: Any) -> None:
    """Partition supervisor process main."""
    queues = dict(partitions[name])
    sup = Supervisor(
        [coordinator_spec(name, settings),
         *(consumer_spec(name, q, queues, settings) for q in queues)],
        strategy="one_for_one", intensity=INTENSITY, period=PERIOD,
        name=f"partition {name}",
        handler=lambda s, payload: _handle(s, name, queues, settings, payload),
        on_shutdown=_drain_all,
    )
    sup.run()


def _drain_all(sup: Supervisor) -> None:
    # Consumers are stopped one by one (reverse order), but they should all
    # stop consuming and start waiting for their jobs at the same moment.
    for child in sup.which_children():
        if child.state == "running":
            try:
                sup.cast_child(child.id, ("drain",))
            except SupervisorGone:
                pass


def _handle(sup: Supervisor, name: str, queues: dict[str, int], settings: Any,
            payload: Any) -> Any:
    op = payload[0]
    if op == "reconfigure":
        return _reconfigure(sup, name, queues, settings, dict(payload[1]))
    if op == "status":
        return status(sup, queues)
    raise ValueError(f"partition {name}: unknown request {op!r}")


def _reconfigure(sup: Supervisor, name: str, queues: dict[str, int], settings: Any,
                 wanted: dict[str, int]) -> dict:
    for queue in [q for q in queues if q not in wanted]:
        sup.terminate_child(queue)
        sup.delete_child(queue)
        del queues[queue]
        log.info("[%s] queue %s stopped", name, queue)
    for queue, workers in wanted.items():
        if queue not in queues:
            queues[queue] = workers
            sup.start_child(consumer_spec(name, queue, queues, settings))
            log.info("[%s] queue %s started with %d workers", name, queue, workers)
        elif queues[queue] != workers:
            queues[queue] = workers
            sup.call_child(queue, ("set_workers", workers), timeout=30.0)
    return status(sup, queues)


def status(sup: Supervisor, queues: dict[str, int]) -> dict:
    """{queue: consumer status} for the queues of this partition."""
    out: dict[str, Any] = {}
    for child in sup.which_children():
        if child.id not in queues:
            continue
        if child.state != "running":
            out[child.id] = {"queue": child.id, "max_workers": queues.get(child.id),
                             "consuming": False, "pid": None, "restarts": child.restarts}
            continue
        try:
            info = sup.call_child(child.id, ("status",), timeout=5.0)
        except Exception as e:  # a busy or dying consumer must not break status
            info = {"queue": child.id, "max_workers": queues.get(child.id), "error": str(e)}
        info["restarts"] = child.restarts
        out[child.id] = info
    return out
