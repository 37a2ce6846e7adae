"""The node's metrics as Prometheus text, ready to mount in any HTTP server under the root.

`Exposition(settings).render()` returns the bytes of ``GET /metrics`` (and
`CONTENT_TYPE`): the root's totals (`roger.node.metrics_store`, one call to
the root, cached `SNAPSHOT_MAX_AGE` seconds) and the queue depths
(`roger.node.queue_gauges`), in `prometheus_client`'s own text format. It
works in any child process of the root, so a status page server can serve
``/metrics`` itself (SPEC lets the two share a port)::

    exposition = Exposition(settings)           # once per process
    if path == "/metrics":
        body = exposition.render()
        handler.send_response(200)
        handler.send_header("Content-Type", CONTENT_TYPE)
        ...

`respond(handler, exposition)` does exactly that for a
`http.server.BaseHTTPRequestHandler`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

import supervision
from roger.metrics import BUCKETS, OUTCOMES
from roger.node.metrics_store import MetricsSnapshot, Snapshot
from roger.node.queue_gauges import QUEUE_STATES, QueueGauges
from roger.settings import Settings

__all__ = ["CONTENT_TYPE", "Exposition", "respond"]

log = logging.getLogger("roger.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
SNAPSHOT_MAX_AGE = 1.0  # seconds: a burst of scrapes costs the root one call
ROOT_TIMEOUT = 5.0  # seconds to wait for the root's answer before serving the last one
_LE = [*(f"{b:g}" for b in BUCKETS), "+Inf"]

_link_lock = threading.Lock()  # one call at a time on this process's link to the root


def call_root(payload: Any, timeout: float) -> Any:
    """Call this process's supervisor (the root), from any thread."""
    with _link_lock:
        return supervision.parent().call(payload, timeout)


class Exposition:
    """Renders the node's metrics; thread-safe (scrapes may come in parallel)."""

    def __init__(self, settings: Settings,
                 ask_root: Callable[[Any, float], Any] = call_root) -> None:
        self.settings = settings
        self.ask_root = ask_root
        self.queues = QueueGauges(settings)
        self._snapshot = Snapshot(settings.node_name)
        self._snapshot_at = float("-inf")
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)  # a custom collector: `collect` below

    def __repr__(self) -> str:
        return f"<Exposition {self.settings.node_name!r}>"

    def render(self) -> bytes:
        """The Prometheus text of ``GET /metrics``."""
        with self._lock:
            return generate_latest(self._registry)

    def snapshot(self) -> Snapshot:
        """The root's totals, at most `SNAPSHOT_MAX_AGE` old (or the last ones it gave)."""
        if time.monotonic() - self._snapshot_at > SNAPSHOT_MAX_AGE:
            try:
                self._snapshot = self.ask_root(MetricsSnapshot(), ROOT_TIMEOUT)
                self._snapshot_at = time.monotonic()
            except Exception as e:  # a busy or restarting root: serve what we have
                log.warning("the node did not give its metrics (%s); serving the last ones", e)
        return self._snapshot

    # ------------------------------------------------- prometheus_client's collector

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield _jobs(snap)
        yield _durations(snap)
        running = GaugeMetricFamily("roger_jobs_running", "Jobs running in workers now.",
                                    labels=["partition", "queue"])
        workers = GaugeMetricFamily("roger_workers", "Live worker processes.",
                                    labels=["partition", "queue"])
        messages = GaugeMetricFamily(
            "roger_queue_messages",
            "Messages per queue and state (ready, delayed, buried, rejected: the queue's, "
            "as RabbitMQ counts them; unacked: held by this node's consumers).",
            labels=["partition", "queue", "state"])
        depths = self.queues.read(snap.partitions)
        for partition, queues in sorted(snap.partitions.items()):
            for queue in sorted(queues):
                now = snap.gauges.get((partition, queue), (0, 0, 0))
                running.add_metric([partition, queue], now[0])
                workers.add_metric([partition, queue], now[1])
                messages.add_metric([partition, queue, "unacked"], now[2])
                depth = depths.get((partition, queue))
                if depth is not None:  # not read yet: absent rather than a false 0
                    for state in QUEUE_STATES:
                        messages.add_metric([partition, queue, state], depth[state])
        waiting = GaugeMetricFamily("roger_partition_waiting",
                                    "1 while a partition cannot start (it is retried), else 0.",
                                    labels=["partition"])
        for partition in sorted(snap.partitions):
            waiting.add_metric([partition], 1 if partition in snap.waiting else 0)
        yield from (running, workers, messages, waiting)


def _jobs(snap: Snapshot) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "roger_jobs", f"Settled jobs by outcome ({', '.join(OUTCOMES)}).",
        labels=["partition", "queue", "job", "outcome"])
    for labels, total in sorted(snap.jobs.items()):
        family.add_metric(list(labels), total)
    return family


def _durations(snap: Snapshot) -> HistogramMetricFamily:
    family = HistogramMetricFamily("roger_job_duration_seconds",
                                   "How long jobs ran in a worker, in seconds.",
                                   labels=["partition", "queue", "job"])
    for labels, hist in sorted(snap.durations.items()):
        cumulative, buckets = 0, []
        for le, n in zip(_LE, hist.counts, strict=True):
            cumulative += n
            buckets.append((le, cumulative))
        family.add_metric(list(labels), buckets, hist.total)
    return family


def respond(handler: BaseHTTPRequestHandler, exposition: Exposition) -> None:
    """Answer a ``GET /metrics`` on `handler` (status, headers, body)."""
    body = exposition.render()
    handler.send_response(200)
    handler.send_header("Content-Type", CONTENT_TYPE)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
