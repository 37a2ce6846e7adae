"""Exit reasons and supervisor reports (OTP's supervisor_report, as data)."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any


def describe_exit(exitcode: int | None) -> str:
    """Render a `Process.exitcode` as an OTP-style reason.

    >>> describe_exit(0), describe_exit(3), describe_exit(-9)
    ('normal', 'exit code 3', 'signal SIGKILL')
    """
    if exitcode is None:
        return "running"
    if exitcode == 0:
        return "normal"
    if exitcode > 0:
        return f"exit code {exitcode}"
    try:
        return f"signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


def signal_name(exitcode: int | None) -> str | None:
    """The signal name (`"SIGKILL"`) that ended a process, or None."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return str(-exitcode)


@dataclass(frozen=True)
class Event:
    """One supervisor report, given to `on_event` and to logging.

    `kind` is one of: ``started``, ``exited``, ``restarting``, ``terminated``,
    ``start_failed``, ``intensity_exceeded``, ``shutdown``, ``message`` (a
    child sent an event upward; it is in `payload`).
    """

    kind: str
    supervisor: str
    child_id: Any = None
    pid: int | None = None
    exitcode: int | None = None
    payload: Any = None
    time: float = field(default_factory=time.time)

    @property
    def reason(self) -> str | None:
        """`normal`, `exit code N` or `signal SIGNAME` for exits, else None."""
        if self.kind in ("exited", "terminated", "start_failed") and self.exitcode is not None:
            return describe_exit(self.exitcode)
        return None

    @property
    def signal(self) -> str | None:
        return signal_name(self.exitcode)


@dataclass(frozen=True)
class ChildInfo:
    """A row of `which_children()`: OTP's {Id, Child, Type, Modules}, with state."""

    id: Any
    pid: int | None
    type: str
    restart: str
    state: str  # "running" or "stopped"
    restarts: int = 0
