"""Registry of job classes, addressed on the wire by name.

Every `roger.Job` subclass registers itself when its class statement runs,
so a worker can run exactly the classes its code has imported: the modules
of the `imports` setting, plus whatever they import. A name read from a
message is only ever looked up here, never imported: importing attacker
controlled module names would let any producer run code in workers.
"""

from __future__ import annotations

import importlib
import threading

from roger.errors import UnknownJob
from roger.record import Record

__all__ = ["import_modules", "register", "resolve"]

_classes: dict[str, type[Record]] = {}
_lock = threading.Lock()


def register(name: str, job_class: type[Record]) -> None:
    """Register `job_class` under `name`.

    Re-registering the same module-qualified class (a module reloaded, or a
    class statement run twice) replaces the old entry; two different classes
    claiming one name is a programming error and raises `ValueError`.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise TypeError(
            f"{job_class.__qualname__}.name must be a non-empty string without "
            f"surrounding whitespace, got {name!r}"
        )
    with _lock:
        existing = _classes.get(name)
        if existing is not None and existing is not job_class and (
            _where(existing) != _where(job_class)
        ):
            raise ValueError(
                f"job name {name!r} is already used by {_where(existing)}; "
                f"cannot also register {_where(job_class)}"
            )
        _classes[name] = job_class


def resolve(name: str) -> type[Record]:
    """Return the job class registered as `name`, or raise `UnknownJob`."""
    try:
        return _classes[name]
    except (KeyError, TypeError):
        raise UnknownJob(name) from None


def import_modules(names: list[str]) -> None:
    """Import the modules listed in the `imports` setting, in order.

    Any failure (missing module, error while importing it) is raised as
    `ImportError` naming the module, with the original exception chained.
    """
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ImportError(
                f"cannot import {name!r} (listed in the 'imports' setting): "
                f"{type(exc).__name__}: {exc}",
                name=name,
            ) from exc


def _where(job_class: type) -> str:
    return f"{job_class.__module__}.{job_class.__qualname__}"
