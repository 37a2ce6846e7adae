"""The raw ceiling: ``python -m benchmarks.peers.kombu_consumer URL QUEUE [PREFETCH [batch]]``.

One plain kombu consumer on one connection, prefetch 100, acking each
message after recording it, as the issue defines the ceiling: what one
Python process can pull from RabbitMQ with no job system around it.
The queue is declared by the driver. Runs until killed. A smaller
PREFETCH (roger's is its worker count times `prefetch_multiplier`) shows
what the window alone costs. ``batch``: ack with ``multiple=True`` once half
the window is unacked, and whatever is left as soon as no message waits
(issue 13's "raw kombu at the same prefetch, acking in batches").
"""

from __future__ import annotations

import sys
from typing import Any

import kombu

from benchmarks.record import record


def main(url: str, queue: str, prefetch: int = 100, batch: bool = False) -> None:
    every = max(1, prefetch // 2) if batch else 1
    unacked: list[Any] = []

    def on_message(body: dict[str, Any], message: Any) -> None:
        record(body["out"], body["i"])
        unacked.append(message)
        if len(unacked) >= every:
            flush()

    def flush() -> None:
        if unacked:
            unacked[-1].ack(multiple=len(unacked) > 1)
            unacked.clear()

    with kombu.Connection(url) as conn:
        consumer = conn.Consumer(kombu.Queue(queue, no_declare=True), callbacks=[on_message],
                                 accept=["json"], prefetch_count=prefetch)
        with consumer:
            while True:
                try:
                    # With acks held back, wait only briefly: no message may come
                    # until they are sent (the window may be full).
                    conn.drain_events(timeout=0.001 if unacked else 1)
                except TimeoutError:
                    flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]), "batch" in sys.argv[4:])
