"""A supervisor of many identical children (OTP's simple_one_for_one)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from .errors import InvalidSpec, MaxChildren
from .events import Event
from .spec import ChildSpec
from .supervisor import Supervisor, _Child


class DynamicSupervisor(Supervisor):
    """Starts children from one template spec, on demand.

    ``start_child(*args)`` starts a child running
    ``spec.start(*spec.args, *args, **spec.kwargs)`` and returns its id,
    ``f"{spec.id}-{n}"``. At most `max_children` run at once (None: no
    limit). Strategy is always one_for_one. As in OTP and Elixir, a child
    that stops for good (`terminate_child`, or an exit that is not
    restarted) is removed: `which_children` no longer lists it, and there
    is nothing to `restart_child` or `delete_child`.

    >>> pool = DynamicSupervisor(ChildSpec("worker", work, restart="transient"),
    ...                          max_children=4)
    >>> handle = pool.start()
    >>> handle.start_child("queue-a")
    'worker-1'
    """

    def __init__(
        self,
        spec: ChildSpec,
        max_children: int | None = None,
        intensity: int = 3,
        period: float = 5.0,
        name: str | None = None,
        on_event: Callable[[Event], Any] | None = None,
        handler: Callable[[Supervisor, Any], Any] | None = None,
        on_shutdown: Callable[[Supervisor], Any] | None = None,
    ) -> None:
        super().__init__((), "one_for_one", intensity, period, name or f"{spec.id}-pool",
                         on_event=on_event, handler=handler, on_shutdown=on_shutdown)
        if max_children is not None and (not isinstance(max_children, int) or max_children < 0):
            raise InvalidSpec(f"max_children: must be an int >= 0 or None, got {max_children!r}")
        self.spec = spec
        self.max_children = max_children
        self._seq = itertools.count(1)

    def _keeps_stopped(self, child: _Child) -> bool:
        return False  # its children are interchangeable: a stopped one is just gone

    def _op_start_child(self, *args: Any) -> Any:
        running = sum(c.running for c in self._children.values())
        if self.max_children is not None and running >= self.max_children:
            raise MaxChildren(f"{self.name}: already {running} children (max_children)")
        spec = dataclasses.replace(self.spec, id=f"{self.spec.id}-{next(self._seq)}",
                                   args=self.spec.args + tuple(args))
        return super()._op_start_child(spec)

    def _op_start_children(self, specs: list[ChildSpec]) -> dict[Any, str | None]:
        raise InvalidSpec(f"{self.name}: a DynamicSupervisor starts children from its one "
                          "spec: call start_child(*args)")


__all__ = ["DynamicSupervisor"]
