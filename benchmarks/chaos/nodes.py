"""The ledger run's roger nodes (`ChaosNode`), and waiting on processes and conditions."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.procs import _kill, _stat, tree
from roger.control import Client


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if gone or a zombie."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _survivors(procs: dict[int, int]) -> list[int]:
    """The pids of `procs` (pid -> start time) still alive (same start time: not reused)."""
    return [pid for pid, start in procs.items() if _start_time(pid) == start]


def wait_gone(procs: dict[int, int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = _survivors(procs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class ChaosNode:
    """One roger node, ``python -m roger.supervisor`` in its own session."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.socket = workdir / f"{name}.sock"
        self.log = workdir / "logs" / f"{name}.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), ROGER_NODE_NAME=name,
                        ROGER_CONTROL_SOCKET=str(self.socket), **env)
        self.workdir = workdir
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.known: dict[int, int] = {}  # every process of its tree seen, for cleanup

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "roger.supervisor"], cwd=self.workdir, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def status(self, timeout: float = 30.0) -> dict:
        """The node's status over its control socket (raises on any failure)."""
        with Client(self.socket, timeout=timeout) as ctl:
            return ctl.request("status")

    def healthy(self, partitions: dict[str, dict[str, int]]) -> bool:
        """Every partition running here, every queue consumed (or idle, watched)."""
        if not self.alive():
            return False
        try:
            status = self.status(timeout=15.0)
        except Exception:
            return False
        running = status.get("running", {})
        for p, queues in partitions.items():
            qs = running.get(p, {}).get("queues", {})
            if not all(isinstance(qs.get(q), dict)
                       and (qs[q].get("consuming") or qs[q].get("idle")) for q in queues):
                return False
        return True

    def remember_tree(self) -> dict[int, int]:
        if self.pid is not None:
            self.known.update(tree(self.pid))
        return tree(self.pid) if self.pid is not None else {}

    def sigkill(self) -> tuple[dict[int, int], list[int]]:
        """SIGKILL the root only; returns its tree and what outlived it by 5 s (orphans)."""
        procs = self.remember_tree()
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)
        orphans = wait_gone(procs, 5.0)
        _kill(procs, signal.SIGKILL)  # an orphan must not keep consuming behind the ledger's back
        return procs, orphans

    def stop(self, grace: float) -> None:
        """SIGTERM the root, then SIGKILL whatever of its tree is left."""
        procs = self.remember_tree()
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        _kill(procs | self.known, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
