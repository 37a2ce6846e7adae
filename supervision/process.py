"""Spawning a supervised child process, and stopping one.

Children are forked (``multiprocess``'s fork context): starting is cheap and
an idle child shares its parent's memory pages. Each child, before its start
function runs: dies with its parent (`lifeline`), leaves its parent's process
group so that a terminal's Ctrl-C reaches only the root (which then shuts the
tree down in order), closes its copies of its parent's other pipes, and gets
default signal handling back.

Each child also freezes the garbage collector's view of what it inherited
(`gc.freeze`): a full collection writes to the header of every object it
visits, which would copy the parent's heap into the child page by page (about
12 MiB per child under roger, measured, the first time a long-lived worker
collects). Inherited objects are almost all modules and classes that live as
long as the process anyway.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import Iterable
from typing import Any

import multiprocess
from multiprocess.connection import wait

from . import link as link_mod
from .lifeline import die_with_parent
from .spec import ChildSpec

log = logging.getLogger("supervision")

_ctx = multiprocess.get_context("fork")


def spawn(spec: ChildSpec, extra_args: tuple = (), close_in_child: Iterable[Any] = ()) -> tuple[
    Any, link_mod.Link
]:
    """Start `spec` in a new process; return (process, parent end of its link)."""
    parent_conn, child_conn = _ctx.Pipe(duplex=True)
    # Until `_bootstrap` resets them, the child runs its parent's Python signal
    # handlers, whose C half writes to the parent's wakeup fd: a SIGTERM sent to
    # a just-forked child would be swallowed by it and read by its supervisor as
    # its own SIGTERM. Block those signals across the fork; the child unblocks
    # them once its handlers are its own.
    handled = _python_handled_signals()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        proc = _ctx.Process(
            target=_bootstrap,
            args=(spec, extra_args, child_conn, os.getpid(), [parent_conn, *close_in_child],
                  mask),
            name=str(spec.id),
        )
        proc.start()
        # The child leaves our process group itself, but maybe not yet: do it
        # from here too (as shells do), so that it is out of the group when we
        # return, and a Ctrl-C to the group never reaches a just-started child.
        try:
            os.setpgid(proc.pid, proc.pid)
        except OSError:  # it did already, or died, or is not permitted: harmless
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    child_conn.close()
    return proc, link_mod.Link(parent_conn)


def _python_handled_signals() -> set[int]:
    return {s for s in signal.valid_signals() if callable(signal.getsignal(s))}


def _bootstrap(spec: ChildSpec, extra_args: tuple, conn: Any, parent_pid: int,
               to_close: list[Any], mask: Iterable[int] = ()) -> None:
    gc.freeze()  # first, before anything runs a collection: see the module docstring
    die_with_parent(parent_pid)
    try:
        os.setpgid(0, 0)
    except OSError:  # already a group leader, or not permitted: harmless
        pass
    for c in to_close:
        try:
            c.close()
        except Exception:
            pass
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    link_mod._set_parent(link_mod.Link(conn))
    spec.start(*spec.args, *extra_args, **spec.kwargs)


def wait_exit(proc: Any, timeout: float | None, also: Iterable[Any] = ()) -> bool:
    """Wait up to `timeout` s for `proc` to exit; True when it did.

    Returns early (False) when one of `also` becomes ready.
    """
    if proc.exitcode is not None:
        return True
    ready = wait([proc.sentinel, *also], timeout)
    if proc.sentinel in ready:
        proc.join()
        return True
    return False


def terminate(proc: Any, shutdown: Any, name: str, interrupt: Any = None) -> int | None:
    """Stop `proc` per its `shutdown` (seconds, brutal_kill, infinity); return its exitcode.

    SIGTERM, then SIGKILL after `shutdown` seconds. If `interrupt` (a waitable)
    becomes ready meanwhile, the wait is cut short and SIGKILL follows at once:
    that is how a second Ctrl-C hurries a shutdown.
    """
    if proc.exitcode is not None or not proc.is_alive():
        proc.join()
        return proc.exitcode
    if shutdown == "brutal_kill":
        _kill(proc)
    else:
        _signal(proc, signal.SIGTERM)
        timeout = None if shutdown == "infinity" else float(shutdown)
        also = [interrupt] if interrupt is not None else []
        if not wait_exit(proc, timeout, also):
            hurried = interrupt is not None and _ready(interrupt)
            why = "hurried by a second signal" if hurried else (
                f"still running {timeout} s after SIGTERM")
            log.warning("%s (pid %s): %s; sending SIGKILL", name, proc.pid, why)
            _kill(proc)
    proc.join()
    return proc.exitcode


def _ready(obj: Any) -> bool:
    return bool(wait([obj], 0))


def _signal(proc: Any, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill(proc: Any) -> None:
    _signal(proc, signal.SIGKILL)
