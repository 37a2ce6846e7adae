"""Run one roger node for the driver: ``python -m benchmarks.peers.roger_node SETTINGS.json``.

Starts ``roger.Node(settings)`` (which returns once every configured
partition consumes), prints one JSON line ``{"root": pid, "start": t,
"ready": t, "packages": {"roger": roger.__file__, ...}}`` (wall-clock
seconds; ``packages`` names where roger, and each package listed in
``$BENCH_PACKAGES``, was imported from, so that the driver can check that a
``--baseline`` node runs the baseline's code), then serves until its stdin
closes (or SIGTERM) and stops the node gracefully.

The node runs in a fresh interpreter, as a user's would, rather than forked
from the driver: the driver has Celery and Dramatiq imported, and the
scale benchmark measures the node's memory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import roger


def main(argv: list[str]) -> int:
    # BENCH_LOG_LEVEL=INFO shows roger's wakes and sleeps in the node's log (--keep-logs).
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(asctime)s %(process)d %(name)s %(message)s")
    with open(argv[1]) as f:
        settings = roger.Settings(**json.load(f))
    signal.signal(signal.SIGTERM, _graceful)
    start = time.time()
    node = roger.Node(settings).start()
    ready = time.time()
    print(json.dumps({"root": node.pid, "start": start, "ready": ready,
                      "packages": _packages()}), flush=True)
    try:
        while sys.stdin.buffer.read1(4096):
            pass
    finally:
        node.stop(timeout=30)
    return 0


def _packages() -> dict[str, str]:
    names = ["roger", *filter(None, os.environ.get("BENCH_PACKAGES", "").split(","))]
    return {name: str(getattr(sys.modules[name], "__file__", None))
            for name in dict.fromkeys(names) if name in sys.modules}


def _graceful(signum: int, frame: object) -> None:
    # SIGTERM (from the driver's cleanup) stops the node gracefully, like EOF.
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
