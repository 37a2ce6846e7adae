"""The raw ceiling: ``python -m benchmarks.peers.kombu_consumer URL QUEUE [PREFETCH]``.

One plain kombu consumer on one connection, prefetch 100, acking each
message after recording it, as the issue defines the ceiling: what one
Python process can pull from RabbitMQ with no job system around it.
The queue is declared by the driver. Runs until killed. A smaller
PREFETCH (roger's is its worker count) shows what the window alone costs.
"""

from __future__ import annotations

import sys
from typing import Any

import kombu

from benchmarks.record import record


def main(url: str, queue: str, prefetch: int = 100) -> None:
    def on_message(body: dict[str, Any], message: Any) -> None:
        record(body["out"], body["i"])
        message.ack()

    with kombu.Connection(url) as conn:
        consumer = conn.Consumer(kombu.Queue(queue, no_declare=True), callbacks=[on_message],
                                 accept=["json"], prefetch_count=prefetch)
        with consumer:
            while True:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
