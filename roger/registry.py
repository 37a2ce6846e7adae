"""Registry of job classes, addressed on the wire by name.

Every `roger.Job` subclass registers itself when its class statement runs,
so a worker can run exactly the classes its code has imported: the modules
of the `imports` setting, plus whatever they import. A name read from a
message is only ever looked up here, never imported: importing attacker
controlled module names would let any producer run code in workers.

A class's default name is ``module:QualName``. A class defined in the
program's main module (a script) is named after the module a worker would
import it as, when there is one (see `main_module_name`); otherwise it keeps
a ``__main__:`` name that `check_addressable` refuses to enqueue.
"""

from __future__ import annotations

import importlib
import importlib.util
import keyword
import os
import sys
import threading

from roger.errors import UnknownJob
from roger.record import Record

__all__ = ["check_addressable", "default_name", "import_modules", "main_module_name",
           "register", "resolve"]

_classes: dict[str, type[Record]] = {}
_lock = threading.Lock()

# What the program's main module is called: "__mp_main__" in a process that
# multiprocessing started with "spawn" (it runs the main script again).
_MAIN_MODULES = ("__main__", "__mp_main__")


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


def default_name(job_class: type) -> str:
    """``module:QualName``, where a main module's classes take its importable name."""
    return f"{_module(job_class)}:{job_class.__qualname__}"


def main_module_name() -> str | None:
    """The name the program's main module would be imported under, or None.

    ``python -m pkg.mod`` gives ``"pkg.mod"``; ``python dir/script.py`` gives
    ``"script"`` when that name, looked up on ``sys.path``, finds this very
    file. None for ``python -c``, stdin, an interactive session, or a script
    that no import statement would find (``my-jobs.py``, a name another
    module already takes).
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in _MAIN_MODULES:
        return spec.name
    path = getattr(main, "__file__", None)
    if not path:
        return None
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext != ".py" or not stem.isidentifier() or keyword.iskeyword(stem):
        return None
    try:
        found = importlib.util.find_spec(stem)
        origin = found.origin if found is not None else None
        return stem if origin and os.path.samefile(origin, path) else None
    except (ImportError, ValueError, OSError):  # ValueError: a module without a spec
        return None


def check_addressable(job: Record) -> None:
    """Raise `TypeError` when no worker can resolve `job`'s name.

    That is a class defined in a main module that no import finds (see
    `main_module_name`): its name is ``__main__:QualName``, and a worker
    would move every such message to ``.rejected``.
    """
    module = job.name.partition(":")[0]
    if module in _MAIN_MODULES:
        cls = type(job).__qualname__
        raise TypeError(
            f"cannot enqueue {cls}: it is defined in the program's main module "
            "(python -c, stdin, an interactive session, or a script whose file name is "
            f"not an importable module name), so no worker could find it as {job.name!r}. "
            "Define it in a module the workers import, or set its `name` class attribute "
            f"to the name it has there (e.g. name = \"myapp.jobs:{cls}\")"
        )


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


def _module(job_class: type) -> str:
    module = job_class.__module__
    if module in _MAIN_MODULES:
        return main_module_name() or module
    return module


def _where(job_class: type) -> str:
    # A script's class seen twice, once run as __main__ and once imported
    # under its own name (a node embedded in the script that also lists it
    # in `imports`), is one class in one place.
    return f"{_module(job_class)}.{job_class.__qualname__}"
