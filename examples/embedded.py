"""Embedding a roger node in your own program.

    python examples/embedded.py        # needs RabbitMQ on localhost (or ROGER_BROKER_URL)

It defines a job, starts a node in a ``with`` block (the node's processes are
children of this one; this program keeps its own signal handlers and
threads), enqueues five jobs, watches them through the node's control
socket, and stops the node gracefully when the block ends. It finishes on
its own in a few seconds.
"""

from __future__ import annotations

import logging
import os
import time

import roger
from roger.control import Client

PARTITION = "embedded_example"


class Greet(roger.Job):
    """Runs in one of the node's worker processes, never in this one."""

    def perform(self, args: dict) -> None:
        print(f"  worker {os.getpid()}: hello, {args['name']}", flush=True)


def settled(client: Client) -> int:
    """Jobs the partition's consumer has finished with, from the node's status."""
    queues = client.request("status")["running"][PARTITION]["queues"]
    return queues["default"]["settled"]


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = roger.Settings(partitions={PARTITION: {"default": 2}},
                              node_name=f"embedded-{os.getpid()}", shutdown_timeout=5)
    roger.configure(settings)  # what Job.enqueue uses

    with roger.Node(settings) as node:  # returns once the partition consumes
        print(f"node {settings.node_name} started: root pid {node.pid}, "
              f"control socket {settings.control_socket}")
        for name in ("Ada", "Grace", "Barbara", "Frances", "Radia"):
            Greet.create({"name": name}).enqueue(PARTITION)

        with Client(settings.control_socket) as client:
            status = client.request("status")
            queue = status["running"][PARTITION]["queues"]["default"]
            print(f"partition {PARTITION}: consumer pid {queue['pid']}, "
                  f"{queue['max_workers']} workers, node processes "
                  f"{sorted(status['processes'])}")
            deadline = time.monotonic() + 20
            while settled(client) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            done = settled(client)
    # Leaving the block stopped the node: its processes are gone.
    print("all 5 jobs done; node stopped" if done == 5 else f"only {done} of 5 jobs done")
    return 0 if done == 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
