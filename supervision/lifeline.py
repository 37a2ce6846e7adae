"""Parent-death watch: no orphan processes, ever.

Linux delivers a chosen signal to a process when the thread that forked it
exits (prctl PR_SET_PDEATHSIG). We ask for SIGKILL: a child whose supervisor
was SIGKILLed dies at once, and its own children follow the same way, so a
whole subtree goes down within milliseconds. The signal is tied to the
forking *thread*; supervisors fork from their loop thread, which lives as
long as the supervisor. Where prctl is missing (not Linux) the supervisor
loop also watches its parent's sentinel and shuts down when it closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1

_libc = None


def _prctl():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Arrange for this process to get `sig` when its parent dies.

    Exits at once if the parent already died between fork and this call.
    """
    try:
        _prctl()(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: rely on the sentinel watch
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
