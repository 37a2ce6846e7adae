"""Child specifications: what to start, and how to treat it when it exits.

Every optional field's default is stated once, here:

- ``restart="permanent"``: always restarted. ``"transient"``: restarted only
  after an abnormal exit (non-zero code or a signal). ``"temporary"``: never
  restarted, and forgotten once it exits.
- ``shutdown=5.0`` for workers and ``"infinity"`` for supervisors (as OTP):
  seconds between SIGTERM and SIGKILL; ``"brutal_kill"`` is SIGKILL at once;
  ``"infinity"`` waits for the child however long it takes.
- ``type="worker"``; ``"supervisor"`` marks a child that supervises others.
- ``significant=False``; a significant child's own exit can shut its
  supervisor down (see the supervisor's ``auto_shutdown``).
- ``notify_ready``: False for workers (started once the process runs), True
  for supervisors (started once they call `supervision.ready()`, after their
  own children started). ``start_timeout=60.0`` bounds that wait.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidSpec

Restart = Literal["permanent", "transient", "temporary"]
Shutdown = float | Literal["brutal_kill", "infinity"]
ChildType = Literal["worker", "supervisor"]

RESTARTS = ("permanent", "transient", "temporary")
TYPES = ("worker", "supervisor")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child process and what to do when it exits.

    `start(*args, **kwargs)` runs in the new process and is its whole life:
    the child exits when it returns (code 0) or raises (code 1), or with the
    code given to `sys.exit`.

    >>> ChildSpec("cache", print, args=("hello",), restart="transient").shutdown
    5.0
    """

    id: Hashable
    start: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown: Shutdown | None = None
    type: ChildType = "worker"
    significant: bool = False
    notify_ready: bool | None = None
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise InvalidSpec(f"id: must be hashable, got {self.id!r}") from None
        if not callable(self.start):
            raise InvalidSpec(f"start: must be callable, got {self.start!r}")
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, Mapping):
            raise InvalidSpec(f"kwargs: must be a mapping, got {self.kwargs!r}")
        if self.restart not in RESTARTS:
            raise InvalidSpec(f"restart: must be one of {RESTARTS}, got {self.restart!r}")
        if self.type not in TYPES:
            raise InvalidSpec(f"type: must be one of {TYPES}, got {self.type!r}")
        if self.shutdown is None:
            object.__setattr__(self, "shutdown", "infinity" if self.type == "supervisor" else 5.0)
        elif self.shutdown not in ("brutal_kill", "infinity"):
            if isinstance(self.shutdown, bool) or not isinstance(self.shutdown, int | float):
                raise InvalidSpec(
                    "shutdown: must be seconds, 'brutal_kill' or 'infinity', "
                    f"got {self.shutdown!r}"
                )
            if self.shutdown < 0:
                raise InvalidSpec(f"shutdown: must be >= 0 seconds, got {self.shutdown!r}")
            object.__setattr__(self, "shutdown", float(self.shutdown))
        if not isinstance(self.significant, bool):
            raise InvalidSpec(f"significant: must be a bool, got {self.significant!r}")
        if self.significant and self.restart == "permanent":
            # OTP refuses this too: a permanent child never exits for good.
            raise InvalidSpec("significant: a permanent child cannot be significant")
        if self.notify_ready is None:
            object.__setattr__(self, "notify_ready", self.type == "supervisor")
        if not isinstance(self.start_timeout, int | float) or self.start_timeout <= 0:
            raise InvalidSpec(f"start_timeout: must be > 0 seconds, got {self.start_timeout!r}")


def check_flags(strategy: str, intensity: int, period: float, auto_shutdown: str) -> None:
    """Validate supervisor flags; the error names the flag."""
    if strategy not in STRATEGIES:
        raise InvalidSpec(f"strategy: must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(intensity, bool) or not isinstance(intensity, int) or intensity < 0:
        raise InvalidSpec(f"intensity: must be an int >= 0, got {intensity!r}")
    if isinstance(period, bool) or not isinstance(period, int | float) or period <= 0:
        raise InvalidSpec(f"period: must be > 0 seconds, got {period!r}")
    if auto_shutdown not in AUTO_SHUTDOWNS:
        raise InvalidSpec(f"auto_shutdown: must be one of {AUTO_SHUTDOWNS}, got {auto_shutdown!r}")
