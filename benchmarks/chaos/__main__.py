"""``python -m benchmarks.chaos``: one ledger run from the command line (see the package doc)."""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import chaos
from benchmarks.chaos.config import ChaosConfig
from benchmarks.chaos.runner import run


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    # SIGTERM to the driver must still run the `finally`s (restore the broker).
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=chaos.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--short", action="store_true",
                   help="the test's form: one of each fault, fixed order (--jobs still applies)")
    p.add_argument("--idle-after", type=float, default=0.0,
                   help="roger's idle_after for the nodes: > 0 makes queues fall idle and wake "
                        "throughout the run (default 0: they never do)")
    p.add_argument("--cluster", action="store_true",
                   help="on a private 3-node RabbitMQ cluster (booted here, torn down after), "
                        "with broker node faults on top of roger's")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.short:
        short = ChaosConfig.short_cluster if args.cluster else ChaosConfig.short
        cfg = replace(short(args.workdir, jobs=args.jobs), idle_after=args.idle_after)
    else:
        seed = args.seed if args.seed is not None else random.randrange(1 << 30)
        cfg = ChaosConfig(jobs=args.jobs, duration=args.duration, seed=seed,
                          workdir=args.workdir, idle_after=args.idle_after,
                          cluster=args.cluster, connect_timeout=2.0 if args.cluster else 5.0)
    with _terminate_as_exit():
        report = run(cfg)
    text = report.render()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if report.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
