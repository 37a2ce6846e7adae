"""How every job of every system proves it ran: one line per job in a per-process file.

The job (roger's, Celery's, Dramatiq's task, or the raw kombu callback)
calls `record(out, index)`; the line holds the job's index and the time it
ran. The driver reads the files (`benchmarks.tally`) and counts *unique*
indexes, so completion means every job accounted for, not an empty queue.
Each system pays the same price for it: one `write` per job, no lock, no
shared state between processes.
"""

from __future__ import annotations

import os
import time

# (pid, out dir) -> fd: keyed by pid too, since a forked child must open its own file.
_files: dict[tuple[int, str], int] = {}


def record(out: str, index: int, value: float | None = None) -> None:
    """Append ``index time [value]`` to this process's file in directory `out`."""
    now = time.time()
    key = (os.getpid(), out)
    fd = _files.get(key)
    if fd is None:
        path = os.path.join(out, f"{key[0]}.rec")
        fd = _files[key] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{index} {now:.6f}\n" if value is None else f"{index} {now:.6f} {value:.6f}\n"
    os.write(fd, line.encode())
