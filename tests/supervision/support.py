"""Tools for the supervision tests: event recording, /proc inspection, cleanup.

The supervisors under test run in other processes, so what they report is
recorded by `Events`, an ``on_event`` callable that appends each event to a
file with one ``write`` (synchronous, so an event is on disk before the
supervisor answers its next call, and safe when a supervisor is SIGKILLed).
The test process reads the file and waits, with a bound, for what it asserts.
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import supervision
from supervision import Event, SupervisorHandle
from tests.helpers import proc_stat, wait_for

ANY = object()
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Events:
    """An ``on_event`` hook that forwards every `Event` to the test process."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.seen: list[Event] = []
        self._offset = 0
        self._partial = b""

    def __call__(self, event: Event) -> None:  # runs in the supervisor process
        line = base64.b64encode(pickle.dumps(event)) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self) -> list[Event]:
        """Every event recorded so far, oldest first."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.seen
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        self.seen.extend(pickle.loads(base64.b64decode(line)) for line in lines)
        return self.seen

    def mark(self) -> int:
        """An index for `wait(..., after=)`: events recorded later than now."""
        return len(self.read())

    def matching(self, kind: str | None = None, child_id: Any = ANY, supervisor: Any = ANY,
                 after: int = 0, where: Callable[[Event], bool] | None = None) -> list[Event]:
        return [
            e for e in self.read()[after:]
            if (kind is None or e.kind == kind)
            and (child_id is ANY or e.child_id == child_id)
            and (supervisor is ANY or e.supervisor == supervisor)
            and (where is None or where(e))
        ]

    def wait(self, kind: str | None = None, child_id: Any = ANY, supervisor: Any = ANY,
             count: int = 1, after: int = 0, where: Callable[[Event], bool] | None = None,
             timeout: float = 10.0) -> list[Event]:
        """The first `count` matching events recorded after index `after`; waits for them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(kind, child_id, supervisor, after, where)
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout} s for {count} x {kind} {child_id!r}; recorded:\n"
                    + "\n".join(f"  {describe(e)}" for e in self.seen)
                )
            time.sleep(0.01)

    def wait1(self, *args: Any, **kwargs: Any) -> Event:
        return self.wait(*args, **kwargs)[0]


def describe(e: Event) -> str:
    return f"{e.supervisor}: {e.kind} {e.child_id!r} pid={e.pid} {e.reason or ''} {e.payload!r}"


# ---------------------------------------------------------------- /proc

class Proc:
    """A process identified by pid *and* start time, so pid reuse is no confusion."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        stat = proc_stat(pid)
        self.start_time = stat[21] if stat is not None else None  # None: gone already

    def state(self) -> str:
        """The /proc state letter (R, S, Z, ...), or "gone"."""
        stat = proc_stat(self.pid)
        if stat is None or self.start_time is None or stat[21] != self.start_time:
            return "gone"
        return stat[2]

    def alive(self) -> bool:
        return self.state() not in ("gone", "Z", "X")

    def cpu_ticks(self) -> int:
        stat = proc_stat(self.pid)
        if stat is None or self.start_time is None or stat[21] != self.start_time:
            return 0
        return int(stat[13]) + int(stat[14])  # utime + stime

    def __repr__(self) -> str:
        return f"<pid {self.pid} {self.state()}>"


def wait_dead(procs: Iterable[Proc], timeout: float) -> None:
    """Every process in `procs` exits (gone or zombie) within `timeout` s."""
    procs = list(procs)
    wait_for(lambda: not any(p.alive() for p in procs), timeout,
               f"all of {procs} dead")


def tree_pids(handle: Any) -> dict[Any, int]:
    """{path: pid} of every process below `handle`, nested supervisors included."""
    pids: dict[Any, int] = {}

    def walk(api: Any, prefix: tuple) -> None:
        for info in api.which_children():
            if info.pid is None:
                continue
            pids[(*prefix, info.id)] = info.pid
            if info.type == "supervisor":
                walk(api.child(info.id), (*prefix, info.id))

    walk(handle, ())
    return pids


# ---------------------------------------------------------------- cleanup

class Trees:
    """Starts supervisors for a test and guarantees none outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.handles: list[SupervisorHandle] = []
        self.embedded: list[supervision.Supervisor] = []
        self.procs: list[Proc] = []
        self._n = 0

    def events(self) -> Events:
        self._n += 1
        return Events(self.tmp_path / f"events-{self._n}.log")

    def start(self, sup: supervision.Supervisor, timeout: float = 30.0) -> SupervisorHandle:
        handle = sup.start(timeout)
        self.handles.append(handle)
        self.procs.append(Proc(handle.pid))
        return handle

    def watch(self, pids: Iterable[int]) -> list[Proc]:
        """Remember processes that must be dead once the test ends."""
        procs = [Proc(pid) for pid in pids]
        self.procs.extend(procs)
        return procs

    def cleanup(self) -> None:
        for sup in self.embedded:
            sup.close()
        for handle in self.handles:
            if handle.exitcode is None:
                handle.stop(timeout=10)
        left = [p for p in self.procs if p.alive()]
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes outlived their test: {left}"


# ---------------------------------------------------------------- behaviours

def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def ready_then_sleep() -> None:
    supervision.ready()
    sleep_forever()


def exit_with(code: int) -> None:
    sys.exit(code)


def flag(path: Path | str) -> bool:
    """True the first time it is called for `path` (across processes)."""
    try:
        os.close(os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def append_line(path: Path | str, text: str) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


class Unpicklable(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.fn = lambda: None  # pickling this error fails


def answer(payload: Any, args: tuple) -> Any:
    """What `serve` replies to a call."""
    op, *rest = payload
    if op == "args":
        return args
    if op == "add":
        return sum(rest)
    if op == "pid":
        return os.getpid()
    if op == "supervised":
        return supervision.is_supervised()
    if op == "raise":
        raise ValueError(rest[0])
    if op == "unpicklable":
        raise Unpicklable(rest[0])
    raise ValueError(f"unknown op {op!r}")


def serve(*args: Any) -> None:
    """A child that answers calls (see `answer`) and obeys casts, over its link."""
    link = supervision.parent()
    while True:
        msg = link.recv()
        if msg[0] == "call":
            link.answer(msg, lambda payload: answer(payload, args))
        elif msg[0] == "cast":
            op, *rest = msg[1]
            if op == "exit":
                sys.exit(rest[0])
            elif op == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif op == "echo":
                link.event(("echo", *rest))
            elif op == "ask":  # call our own supervisor; its answer goes up as an event
                link.event(("answer", link.call(rest[0], timeout=5)))
