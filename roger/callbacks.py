"""User callbacks around jobs: loaded from the `callbacks` setting, never fatal.

The setting names an object as ``"module:attribute"``. A class is
instantiated once with no arguments (as Celery and Dramatiq middleware are);
any other object (an instance, a module) is used as it is. It may define any
of `before_run(partition, job)`, `after_run(partition, job, result, state)`,
`on_error(partition, job, error, traceback, state)`, `on_cancel(partition, job)`
and `on_buried(partition, job, error, traceback, state)`, where `state` is
what `before_run` returned. A callback that raises is logged and ignored: it
never changes how the job is settled.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger("roger.callbacks")

NAMES = ("before_run", "after_run", "on_error", "on_cancel", "on_buried")


class Callbacks:
    """The loaded callbacks object, with safe invocation."""

    def __init__(self, target: Any = None) -> None:
        self.target = target
        self._fns = {n: getattr(target, n, None) for n in NAMES} if target is not None else {}

    @classmethod
    def load(cls, spec: str | None) -> Callbacks:
        """Import ``"module:attribute"``; raises ValueError naming the setting when it cannot."""
        if not spec:
            return cls()
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(f"callbacks: expected 'module:attribute', got {spec!r}")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"callbacks: cannot load {spec!r}: {e}") from e
        if isinstance(target, type):
            target = target()
        return cls(target)

    def call(self, name: str, *args: Any) -> Any:
        """Run one callback if defined; returns its result, or None when it failed."""
        fn = self._fns.get(name)
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception:
            job = args[1] if len(args) > 1 else None
            log.exception("[%s] callback %s failed (job %s)", args[0] if args else "?", name,
                          getattr(job, "id", "?"))
            return None
