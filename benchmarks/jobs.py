"""roger's benchmark jobs (the node imports this module: ``imports=["benchmarks.jobs"]``)."""

from __future__ import annotations

import time
from typing import Any

import roger
from benchmarks.record import record


class NoOp(roger.Job):
    """Does nothing but prove it ran (throughput)."""

    name = "bench:NoOp"

    def perform(self, args: dict[str, Any]) -> None:
        record(args["out"], args["i"])


class Latency(roger.Job):
    """Records how long after its enqueue call it started (latency)."""

    name = "bench:Latency"

    def perform(self, args: dict[str, Any]) -> None:
        started = time.time()
        record(args["out"], args["i"], started - args["t"])


class Keyed(roger.Job):
    """A job with a queue_key of its own (``args["key"]``): enqueueing it asks the
    partition's coordinator to claim the key first (scale)."""

    name = "bench:Keyed"

    def queue_key(self, args: dict[str, Any]) -> str:
        return str(args["key"])

    def perform(self, args: dict[str, Any]) -> None:
        record(args["out"], args["i"])


class Delayed(roger.Job):
    """Records how long after its intended due time (``args["due"]``) it started (delayed)."""

    name = "bench:Delayed"

    def perform(self, args: dict[str, Any]) -> None:
        record(args["out"], args["i"], time.time() - args["due"])


class Periodic(roger.Job):
    """A periodic entry's job: records its slot (from its id) and when it ran (periodic)."""

    name = "bench:Periodic"

    def perform(self, args: dict[str, Any]) -> None:
        slot = int(self.id.rsplit(":", 1)[1])  # periodic:<entry>:<slot>
        record(args["out"], slot, (self.queued_at or 0) / 1000 - slot)


class Mixed(roger.Job):
    """The mixed workload (issue 13): sleeps ``args["sleep"]`` seconds (0: a no-op), then
    records how long after its enqueue call it started."""

    name = "bench:Mixed"

    def perform(self, args: dict[str, Any]) -> None:
        started = time.time()
        if args.get("sleep"):
            time.sleep(args["sleep"])
        # Recorded once it ended: a run is over when every job has finished.
        record(args["out"], args["i"], started - args["t"])
