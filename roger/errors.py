"""The error tree every roger API raises from.

Transport errors (kombu, py-amqp, sockets) never leak out of roger: they are
re-raised as `BrokerError`, so callers catch one family of exceptions.
"""

from __future__ import annotations

import signal as _signal

__all__ = [
    "BadMessage",
    "BrokerError",
    "ControlError",
    "DuplicateJob",
    "JobTimeout",
    "RogerError",
    "UnknownJob",
    "WorkerCrashed",
]


class RogerError(Exception):
    """Base class of every error roger raises on purpose."""


class DuplicateJob(RogerError):
    """A job with the same `queue_key` is already queued or running."""


class JobTimeout(RogerError):
    """A job ran longer than its `max_execution_time` and was killed."""


class WorkerCrashed(RogerError):
    """The worker process running a job died before settling it.

    `exitcode` is the process exit status when it exited, `signal` the signal
    name (e.g. ``"SIGKILL"``) when a signal killed it; either may be None.
    """

    def __init__(
        self, exitcode: int | None = None, signal: str | int | None = None
    ) -> None:
        if isinstance(signal, int):
            signal = _signal_name(signal)
        self.exitcode = exitcode
        self.signal = signal
        if signal is not None:
            message = f"worker died with signal {signal}"
        elif exitcode is not None:
            message = f"worker exited with code {exitcode}"
        else:
            message = "worker died"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[int | None, str | None]]:
        # Errors cross process boundaries (replies on supervision links): keep
        # the attributes when copied, not just the formatted message.
        return (type(self), (self.exitcode, self.signal))


class BadMessage(RogerError):
    """A message that cannot be turned into a job.

    `reason` is a short machine-readable word (``"wrong_content_type"``,
    ``"undecodable"``, ``"invalid_fields"``, ``"unknown_job"``,
    ``"too_large"``) suitable for the `x-roger-reason` header and for
    metrics; `detail` says what exactly was wrong, for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self) -> tuple[type[BadMessage], tuple[str, str]]:
        return (type(self), (self.reason, self.detail))


class UnknownJob(BadMessage):
    """No `roger.Job` class is registered under the requested name."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        super().__init__(
            "unknown_job", detail or f"no job class is registered as {name!r}"
        )

    def __reduce__(self) -> tuple[type[UnknownJob], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.name, self.detail))


class BrokerError(RogerError):
    """RabbitMQ could not be reached or refused an operation.

    Raised instead of any kombu/py-amqp/socket exception; the original is
    chained as ``__cause__``.
    """


class ControlError(RogerError):
    """A node's control socket could not be used, or it refused a request.

    Raised by `roger.control.Client` when the node answers
    ``{"ok": false, "error": ...}`` (`reply` holds that answer), when no node
    listens on the socket, or when it does not answer in time; and by a node
    whose control socket cannot be created (path too long, or another live
    node serving it).
    """

    def __init__(self, message: str, reply: dict | None = None) -> None:
        self.reply = reply
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ControlError], tuple[str, dict | None]]:
        return (type(self), (str(self), self.reply))


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
