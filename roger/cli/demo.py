"""The demo: a node serving partition ``demo`` and a producer feeding it.

``python -m roger demo`` starts a node in a child process, enqueues
``Greet`` jobs at a steady rate (every tenth one a retryable ``Flaky`` that
fails on its first attempt and succeeds on its retry), and prints a progress
line each second: enqueued, done, retried, and the queue's depth.
"""

from __future__ import annotations

import logging
import os
import time

import multiprocess

import roger

# Shared memory, created before the node forks: workers count what they do
# and the producer reads it. (Demo only; real jobs report through callbacks.)
DONE = multiprocess.Value("i", 0, lock=True)
FAILED = multiprocess.Value("i", 0, lock=True)

log = logging.getLogger("roger.demo")


class Greet(roger.Job):
    """Says hello; takes a few milliseconds."""

    def perform(self, args: dict) -> None:
        time.sleep(0.005)
        log.info("[%s/%s] job %s: hello, %s (worker pid %d)", self.partition, self.queue,
                 self.id[:8], args["name"], os.getpid())
        with DONE.get_lock():
            DONE.value += 1


class Flaky(roger.Job):
    """Fails on its first attempt; roger retries it after the first retry level."""

    retryable = True

    def perform(self, args: dict) -> None:
        if self.retry_count == 0:
            with FAILED.get_lock():
                FAILED.value += 1
            raise RuntimeError("first attempts always fail in this demo")
        log.info("[%s/%s] job %s: flaky job #%d succeeded on retry %d", self.partition,
                 self.queue, self.id[:8], args["n"], self.retry_count)
        with DONE.get_lock():
            DONE.value += 1


def main(seconds: float | None = None, rate: float = 20.0, workers: int = 4) -> int:
    settings = roger.Settings(partitions={"demo": {"default": workers}},
                              imports=["roger.cli.demo"], node_name=f"demo-{os.getpid()}",
                              retry_levels=[1, 3, 5])
    roger.configure(settings)
    print(f"starting a node: partition 'demo', queue 'default', {workers} workers",
          flush=True)
    enqueued = 0
    started = time.monotonic()
    with roger.Node(settings):
        print("node ready; enqueueing jobs (Ctrl-C to stop)", flush=True)
        next_report = started + 1.0
        try:
            while seconds is None or time.monotonic() - started < seconds:
                enqueued += 1
                if enqueued % 10 == 0:
                    Flaky.create({"n": enqueued}).enqueue("demo")
                else:
                    Greet.create({"name": f"visitor {enqueued}"}).enqueue("demo")
                time.sleep(1.0 / rate)
                if time.monotonic() >= next_report:
                    next_report += 1.0
                    print(f"[{time.monotonic() - started:5.1f}s] enqueued {enqueued:5d}"
                          f"  done {DONE.value:5d}  failed-then-retried {FAILED.value:4d}",
                          flush=True)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        # Let the last retries land before the node stops.
        deadline = time.monotonic() + 8.0
        while DONE.value < enqueued and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"done: enqueued {enqueued}, completed {DONE.value}", flush=True)
    return 0 if DONE.value == enqueued else 1
