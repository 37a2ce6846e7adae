"""OTP-style supervision of operating-system processes.

A standalone package (it never imports roger). The vocabulary is OTP's:

============================  ==============================================
OTP                           here
============================  ==============================================
child spec                    `ChildSpec(id, start, args, kwargs, restart,
                              shutdown, type, significant)`
supervisor flags              `Supervisor(children, strategy, intensity,
                              period, name, auto_shutdown)`
one_for_one / one_for_all /   ``strategy=`` the same names
rest_for_one
simple_one_for_one,           `DynamicSupervisor(spec, max_children)`
DynamicSupervisor
supervisor:start_child/2 ...  `start_child`, `terminate_child`,
                              `restart_child`, `delete_child`,
                              `which_children`, `count_children`
proc_lib init_ack             `ready()` (the start handshake)
supervisor reports            `Event`s to logging and ``on_event``
gen_server:call / cast        `Link.call` / `Link.cast`; `parent()` in a child
exit reason                   `describe_exit`: ``normal``, ``exit code N``,
                              ``signal SIGKILL``
linked processes              `lifeline`: children die with their parent
============================  ==============================================

A tree in a dozen lines::

    from supervision import ChildSpec, Supervisor

    def flaky():
        import time; time.sleep(1); raise SystemExit(1)

    sup = Supervisor([ChildSpec("flaky", flaky)], intensity=5, period=10)
    with sup.start() as handle:
        print(handle.which_children())
"""

from .client import (
    ChildSupervisor,
    ParentSupervisor,
    SupervisorAPI,
    SupervisorHandle,
    parent_supervisor,
)
from .dynamic import DynamicSupervisor
from .errors import (
    CallFailed,
    CallTimeout,
    ChildExists,
    ChildRunning,
    InvalidSpec,
    MaxChildren,
    StartFailed,
    SupervisionError,
    SupervisorGone,
    UnknownChild,
)
from .events import ChildInfo, Event, describe_exit
from .link import Link, is_supervised, parent, ready
from .spec import ChildSpec
from .supervisor import Supervisor

__all__ = [
    "ParentSupervisor",
    "parent_supervisor",
    # building trees
    "ChildSpec", "Supervisor", "DynamicSupervisor",
    # controlling them
    "SupervisorAPI", "SupervisorHandle", "ChildSupervisor", "ChildInfo",
    # reports
    "Event", "describe_exit",
    # inside a child
    "Link", "parent", "ready", "is_supervised",
    # errors
    "SupervisionError", "InvalidSpec", "UnknownChild", "ChildExists", "ChildRunning",
    "MaxChildren", "StartFailed", "SupervisorGone", "CallTimeout", "CallFailed",
]
