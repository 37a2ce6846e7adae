"""The ledger run's job (the chaos nodes import this module: ``imports=["benchmarks.chaos.jobs"]``).

Every completion is one line appended to a file of its own process in the
run's sink directory. The sink must survive every fault the run injects:
a process SIGKILLed right after `perform` wrote its line must not take the
line with it, and two processes must never interleave their lines. Hence
one file per process, opened with ``O_APPEND`` and written with a single
unbuffered `os.write` per completion (the line is in the kernel's page
cache once the call returns, whatever happens to the process next).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import roger

# (pid, directory) -> descriptor: a forked worker must open its own file, not
# append to the one its parent (or a recycled predecessor) opened.
_sinks: dict[tuple[int, str], int] = {}


def _sink(directory: str) -> int:
    key = (os.getpid(), directory)
    fd = _sinks.get(key)
    if fd is None:
        path = os.path.join(directory, f"{os.getpid()}-{time.time_ns()}.jsonl")
        fd = _sinks[key] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return fd


def record_completion(directory: str, **fields: Any) -> None:
    """Append one completion line to this process's sink file."""
    line = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
    os.write(_sink(directory), line)


class LedgerJob(roger.Job):
    """A numbered job that records its completion.

    Retryable, so that a worker killed mid-job makes the job run again (a
    non-retryable job whose worker dies is settled as failed, by design).

    Arguments: ``n`` (its number in the ledger), ``sink`` (the directory),
    ``sleep`` (seconds of work), and ``hold`` (seconds a *victim* job waits
    on its first delivery, for the fault injector to kill its worker
    mid-job; a retry or redelivery does not wait).
    """

    name = "chaos:LedgerJob"
    retryable = True

    def perform(self, args: dict[str, Any]) -> None:
        started = time.time()
        hold = args.get("hold", 0)
        if hold and self.retry_count == 0 and not self.redelivered:
            time.sleep(hold)
        elif args.get("sleep"):
            time.sleep(args["sleep"])
        record_completion(
            args["sink"], n=args["n"], id=self.id, node=os.environ.get("ROGER_NODE_NAME", "?"),
            pid=os.getpid(), attempt=self.retry_count, redelivered=bool(self.redelivered),
            partition=self.partition, queue=self.queue, started=started, t=time.time(),
            due_at=self.due_at)
