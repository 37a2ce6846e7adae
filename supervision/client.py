"""Runtime control of a supervisor from outside its loop.

`SupervisorAPI` is the one set of operations, whoever calls them: the
`Supervisor` itself (directly on its loop thread, over its control pipe from
other threads), a `SupervisorHandle` held by the process that started it,
and a `ChildSupervisor` reference to a supervisor nested below another.
Every call is bounded by `timeout` seconds and raises `CallTimeout`,
`SupervisorGone` or the supervisor's own error (`UnknownChild`, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import link as link_mod
from . import process
from .errors import SupervisorGone
from .events import ChildInfo, describe_exit
from .link import Link

if TYPE_CHECKING:
    from .spec import ChildSpec

DEFAULT_TIMEOUT = 30.0
_NO_ARGS: Any = object()  # start_child() of a DynamicSupervisor takes no spec


class SupervisorAPI:
    """OTP's supervisor calls; subclasses provide `_request`."""

    def _request(self, payload: tuple, timeout: float | None) -> Any:
        raise NotImplementedError

    def start_child(self, spec: Any = _NO_ARGS, *args: Any,
                    timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Start a new child; returns its id.

        For a `DynamicSupervisor`, pass the extra start arguments instead of
        a spec: ``pool.start_child(42)``, or none: ``pool.start_child()``.
        """
        args = args if spec is _NO_ARGS else (spec, *args)
        return self._request(("start_child", *args), timeout)

    def start_children(self, specs: Iterable[ChildSpec],
                       timeout: float | None = DEFAULT_TIMEOUT) -> dict[Any, str | None]:
        """Start several children at once: all spawn, then each is waited for.

        Starts that each wait on I/O (a connection, a subscription) overlap,
        instead of adding up as a row of `start_child` calls would. Answers
        each id mapped to None (started) or the reason it did not start.
        """
        return self._request(("start_children", list(specs)), timeout)

    def terminate_child(self, child_id: Any, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Stop a child per its `shutdown`.

        Its spec stays, to `restart_child` or `delete_child`, unless it is
        temporary or its supervisor a `DynamicSupervisor`: then it is gone.
        """
        return self._request(("terminate_child", child_id), timeout)

    def restart_child(self, child_id: Any, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Start a stopped child again from its spec; returns its new pid."""
        return self._request(("restart_child", child_id), timeout)

    def delete_child(self, child_id: Any, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Forget a stopped child's spec."""
        return self._request(("delete_child", child_id), timeout)

    def which_children(self, timeout: float | None = DEFAULT_TIMEOUT) -> list[ChildInfo]:
        """One `ChildInfo` per child, in start order."""
        return self._request(("which_children",), timeout)

    def count_children(self, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, int]:
        """OTP's counts: ``specs``, ``active``, ``supervisors``, ``workers``."""
        return self._request(("count_children",), timeout)

    def request_shutdown(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Ask the supervisor to begin its orderly shutdown; returns once it has begun."""
        return self._request(("stop",), timeout)

    def call(self, payload: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """Send the supervisor's `handler` a request and return its reply."""
        return self._request(payload, timeout)

    def call_child(self, child_id: Any, payload: Any, timeout: float | None = DEFAULT_TIMEOUT
                   ) -> Any:
        """Call one of the supervisor's children over its link."""
        return self._request(("call_child", child_id, payload, timeout), timeout)

    def cast_child(self, child_id: Any, payload: Any, timeout: float | None = DEFAULT_TIMEOUT
                   ) -> None:
        """Send one of the supervisor's children a message that wants no reply."""
        return self._request(("cast_child", child_id, payload), timeout)

    def child(self, child_id: Any) -> ChildSupervisor:
        """A reference to a supervisor nested below this one."""
        return ChildSupervisor(self, child_id)


class ChildSupervisor(SupervisorAPI):
    """A supervisor nested as child `child_id` of `parent`; calls go through the parent."""

    def __init__(self, parent: SupervisorAPI, child_id: Any) -> None:
        self.parent = parent
        self.child_id = child_id

    def _request(self, payload: tuple, timeout: float | None) -> Any:
        return self.parent.call_child(self.child_id, payload, timeout)

    def __repr__(self) -> str:
        return f"<ChildSupervisor {self.child_id!r} of {self.parent!r}>"


class ParentSupervisor(SupervisorAPI):
    """A child's own supervisor, reached over the child's link (`parent_supervisor()`).

    Calls block the calling thread until answered; a `Link` serves one
    caller at a time.
    """

    def __init__(self, link: Link) -> None:
        self.link = link

    def _request(self, payload: tuple, timeout: float | None) -> Any:
        return self.link.call(payload, timeout)

    def __repr__(self) -> str:
        return "<ParentSupervisor>"


def parent_supervisor() -> ParentSupervisor:
    """This process's supervisor, as a `SupervisorAPI` (inside a supervised child)."""
    return ParentSupervisor(link_mod.parent())


class SupervisorHandle(SupervisorAPI):
    """A supervisor running in its own process, as returned by `Supervisor.start()`."""

    def __init__(self, proc: Any, link: Link, name: str) -> None:
        self._proc = proc
        self._link = link
        self.name = name
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def sentinel(self) -> int:
        """An fd that becomes readable when the supervisor's process exits."""
        return self._proc.sentinel

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def is_alive(self) -> bool:
        return self._proc.is_alive()

    def _request(self, payload: tuple, timeout: float | None) -> Any:
        if not self._proc.is_alive():
            raise SupervisorGone(f"{self.name} (pid {self.pid}) is not running")
        with self._lock:
            return self._link.call(payload, timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then wait for its orderly shutdown; SIGKILL after `timeout` s.

        Returns the exit code (0 after an orderly shutdown).
        """
        shutdown = "infinity" if timeout is None else timeout
        code = process.terminate(self._proc, shutdown, self.name)
        self._link.close()
        return code

    def join(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` s for the supervisor to exit; returns its exit code or None."""
        self._proc.join(timeout)
        return self._proc.exitcode

    def __enter__(self) -> SupervisorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.exitcode is None:
            self.stop()

    def __repr__(self) -> str:
        state = "running" if self._proc.exitcode is None else describe_exit(self._proc.exitcode)
        return f"<SupervisorHandle {self.name!r} pid {self.pid}: {state}>"

