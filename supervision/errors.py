"""The supervision error tree."""

from __future__ import annotations


class SupervisionError(Exception):
    """Base class of every error this package raises."""


class InvalidSpec(SupervisionError, ValueError):
    """A child spec or supervisor flag is invalid; the message names the field."""


class UnknownChild(SupervisionError, KeyError):
    """No child with that id is known to the supervisor."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want prose.
        return str(self.args[0]) if self.args else "unknown child"


class ChildExists(SupervisionError):
    """A child with that id is already known to the supervisor."""


class ChildRunning(SupervisionError):
    """The operation needs a stopped child (restart_child, delete_child)."""


class MaxChildren(SupervisionError):
    """A dynamic supervisor already runs `max_children` children."""


class StartFailed(SupervisionError):
    """A child died or did not report ready within its start timeout."""


class SupervisorGone(SupervisionError):
    """The supervisor (or child) being called is not running any more."""


class CallTimeout(SupervisionError, TimeoutError):
    """A call got no reply within its timeout."""


class CallFailed(SupervisionError):
    """The callee raised while handling a call; the message carries its error."""
