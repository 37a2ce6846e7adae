"""Helpers both halves of the suite share: waiting, /proc, the broker's control tool.

What the tests assert about usually happens in other processes, so they poll
for it, with a bound, rather than sleep.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository: roger/, supervision/, benchmarks/, examples/ are below it."""


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat (field 1 is index 0), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:  # gone, or going while we read
        return None
    # comm (field 2) may hold spaces: split after its closing parenthesis.
    head, _, tail = data.rpartition(")")
    return [head.split(" (", 1)[0], head.split(" (", 1)[1], *tail.split()]


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] not in ("Z", "X")


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl`` against the local broker; its output, or fail the test."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout
