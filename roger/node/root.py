"""`roger.Node`: the root of a node's process tree, embeddable or standalone.

The root supervisor's children are the partition supervisors. They are
`temporary` children and the root restarts them itself: a partition that
crashes, or cannot start at all (broker down, restart intensity exceeded),
is listed as *waiting* and retried with a capped backoff, and never counts
against the root's own restart intensity. So one partition's trouble never
takes the node, or another partition, down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from multiprocess.connection import wait

from roger import control, registry
from roger.amqp import frames
from roger.node.control_server import control_spec
from roger.node.system import system_spec
from roger.partition.supervisor import run_partition
from roger.settings import Settings, check_partition_name, check_queue_name
from supervision import ChildSpec, Event, StartFailed, Supervisor, SupervisorAPI

log = logging.getLogger("roger.node")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
STABLE_AFTER = 60.0  # a partition up this long starts its backoff afresh
CALL_TIMEOUT = 120.0


class Root:
    """The root supervisor's roger side: desired partitions, waiting ones, requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Shared with the partition specs: a restarted partition gets its
        # current queues, not the ones it first started with.
        self.partitions: dict[str, dict[str, int]] = {
            name: dict(queues) for name, queues in settings.partitions.items()
        }
        self.waiting: dict[str, int] = {}  # partition -> failed attempts
        self.started_at: dict[str, float] = {}
        # partition -> times its supervisor exited on its own (each one is
        # started again, after waiting): the partitions' restart counts.
        self.restarts: dict[str, int] = {}
        # The control server is the first child: the socket is there before
        # any partition starts, and a partition waiting for the broker never
        # keeps the operator out.
        self.sup = Supervisor(
            (control_spec(settings), system_spec(settings)),
            name=f"roger node {settings.node_name}", intensity=10, period=10.0,
            on_event=self._on_event, handler=self._handle, on_start=self._start_all,
        )

    def spec(self, name: str) -> ChildSpec:
        s = self.settings
        return ChildSpec(
            name, run_partition, args=(name, self.partitions, s), type="supervisor",
            restart="temporary",
            shutdown=s.shutdown_timeout + 10.0,
            start_timeout=len(self.partitions[name]) * (2 * s.connect_timeout + 10.0) + 5.0,
        )

    # ------------------------------------------------------------ partitions

    def _start_all(self, sup: Supervisor) -> None:
        for name in list(self.partitions):
            self._try_start(name)

    def _try_start(self, name: str) -> bool:
        if name not in self.partitions or self._running(name) or self.sup.stopping:
            return False
        try:
            self.sup.start_child(self.spec(name))
        except StartFailed as e:
            self._wait(name, str(e))
            return False
        self.waiting.pop(name, None)
        self.started_at[name] = time.monotonic()
        return True

    def _wait(self, name: str, why: str) -> None:
        attempts = self.waiting.get(name, 0)
        if time.monotonic() - self.started_at.get(name, 0.0) > STABLE_AFTER:
            attempts = 0
        self.started_at.pop(name, None)
        self.waiting[name] = attempts + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempts)
        log.warning("partition %s is waiting (%s); retrying in %.1f s", name, why, delay)
        self.sup.call_later(delay, lambda: self._try_start(name))

    def _running(self, name: str) -> bool:
        return any(c.id == name and c.state == "running" for c in self.sup.which_children())

    def _on_event(self, event: Event) -> None:
        if event.kind == "exited" and event.child_id in self.partitions and not self.sup.stopping:
            self.restarts[event.child_id] = self.restarts.get(event.child_id, 0) + 1
            self._wait(event.child_id, f"its supervisor exited: {event.reason}")

    # --------------------------------------------------------------- requests

    def _handle(self, sup: Supervisor, payload: Any) -> Any:
        op, *args = payload
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ValueError(f"unknown node request {op!r}")
        return fn(*args)

    def op_start_partition(self, name: str, queues: dict[str, int]) -> dict:
        check_partition_name(name)  # also keeps it apart from "roger.control" & co.
        if name in self.partitions:
            raise ValueError(f"partition {name!r} is already configured on this node")
        self.partitions[name] = _check_queues(queues)
        if not self._try_start(name):
            log.warning("partition %s did not start; it is waiting", name)
        return self.op_status()

    def op_reconfigure_partition(self, name: str, queues: dict[str, int]) -> dict:
        self._known(name)
        self.partitions[name] = _check_queues(queues)
        if self._running(name):
            self.sup.call_child(name, ("reconfigure", self.partitions[name]), CALL_TIMEOUT)
        return self.op_status()

    def op_stop_partition(self, name: str) -> dict:
        self._known(name)
        del self.partitions[name]
        self.waiting.pop(name, None)
        self.restarts.pop(name, None)
        if self._running(name):
            self.sup.terminate_child(name)
        return self.op_status()

    def op_restart_partition(self, name: str) -> dict:
        self._known(name)
        if self._running(name):
            self.sup.terminate_child(name)
        self._try_start(name)
        return self.op_status()

    def op_status(self) -> dict:
        running: dict[str, Any] = {}
        for child in self.sup.which_children():
            if child.state != "running" or child.id not in self.partitions:
                continue  # the node's own processes (control, system) are not partitions
            try:
                queues = self.sup.call_child(child.id, ("status",), 10.0)
            except Exception as e:
                queues = {"error": str(e)}
            running[child.id] = {"pid": child.pid, "restarts": self.restarts.get(child.id, 0),
                                 "queues": queues}
        return {
            "node": self.settings.node_name,
            "pid": os.getpid(),
            "running": running,
            "waiting": {n: dict(self.partitions[n]) for n in self.waiting if n in self.partitions},
        }

    def _known(self, name: str) -> None:
        if name not in self.partitions:
            raise ValueError(f"partition {name!r} is not configured on this node")


def _check_queues(queues: Any) -> dict[str, int]:
    if not isinstance(queues, dict) or not queues:
        raise ValueError(f"queues must be a non-empty dict of queue name to workers, "
                         f"got {queues!r}")
    out = {}
    for q, n in queues.items():
        check_queue_name(q)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"queue {q!r}: workers must be an int >= 0, got {n!r}")
        out[q] = n
    return out


def _start_root(sup: Supervisor, timeout: float) -> Any:
    """Fork the root supervisor from a thread that outlives it.

    Children die with the *thread* that forked them (see
    `supervision.lifeline`): a node started from a host's short-lived thread
    (a web framework's startup hook, say) would be SIGKILLed when that
    thread ends. The main thread lasts as long as the process; from any
    other, a keeper thread forks the root and waits for it to exit.
    """
    if threading.current_thread() is threading.main_thread():
        return sup.start(timeout=timeout)
    started: dict[str, Any] = {}
    done = threading.Event()

    def keep() -> None:
        try:
            started["handle"] = sup.start(timeout=timeout)
        except BaseException as e:  # re-raised in the caller's thread
            started["error"] = e
            return
        finally:
            done.set()
        # Waits on the sentinel without reaping: stop() and join() stay the caller's.
        wait([started["handle"]._proc.sentinel])

    threading.Thread(target=keep, name=f"roger root keeper ({sup.name})", daemon=True).start()
    done.wait()
    if "error" in started:
        raise started["error"]
    return started["handle"]


class Node:
    """A roger node: the root of a process tree serving partitions.

    >>> with roger.Node(partitions={"myapp": {"default": 4}}) as node:
    ...     node.reconfigure_partition("myapp", {"default": 8})
    ...     print(node.status())

    `run()` runs the tree with this process as its root (blocking until
    SIGTERM, SIGINT or `stop()` from another thread); `start()` runs it in a
    child process and returns once the configured partitions consume.
    Settings come from `settings`, else from the environment and
    ``roger.toml``; keyword arguments override single fields.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = Settings(**(settings.model_dump() | overrides))
        self.settings = settings
        self._api: SupervisorAPI | None = None
        self._handle: Any = None

    def _root(self) -> Root:
        # Import job modules once in the root: typos fail the node at start,
        # and every forked process shares the imported code.
        registry.import_modules(self.settings.imports)
        frames.warm_up(self.settings)
        # A live node on our control socket (or a path too long for one)
        # fails here, in the caller, with a clear ControlError.
        control.claim_socket_path(self.settings.control_socket)
        return Root(self.settings)

    def run(self) -> None:
        """Serve in this process until SIGTERM/SIGINT (or `stop()` from another thread)."""
        root = self._root()
        self._api = root.sup
        try:
            root.sup.run()
        finally:
            self._api = None

    def start(self, timeout: float | None = None) -> Node:
        """Start the tree in a child process; returns once the partitions are consuming."""
        if self._handle is not None and self._handle.is_alive():
            raise RuntimeError("this node is already started")
        root = self._root()
        start_timeout = timeout or sum(
            root.spec(n).start_timeout for n in root.partitions) + 30.0
        self._handle = _start_root(root.sup, start_timeout)
        self._api = self._handle
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """Shut down gracefully (running jobs get `shutdown_timeout`); returns the exit code."""
        if self._handle is None:
            if self._api is not None:  # run() in another thread of this process
                self._api._request(("stop",), CALL_TIMEOUT)
            return None
        code = self._handle.stop(timeout)
        self._handle = self._api = None
        return code

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The root process's pid (while started)."""
        return self._handle.pid if self._handle is not None else None

    def _call(self, *payload: Any) -> Any:
        if self._api is None:
            raise RuntimeError("this node is not running: call start() or run() first")
        return self._api.call(payload, CALL_TIMEOUT)

    def start_partition(self, name: str, queues: dict[str, int]) -> dict:
        """Start serving a partition; returns once its consumers are subscribed."""
        return self._call("start_partition", name, queues)

    def reconfigure_partition(self, name: str, queues: dict[str, int]) -> dict:
        """Make a partition's queues exactly `queues` (left-out queues stop; 0 stops consuming)."""
        return self._call("reconfigure_partition", name, queues)

    def stop_partition(self, name: str) -> dict:
        """Stop serving a partition on this node (its running jobs finish or are requeued)."""
        return self._call("stop_partition", name)

    def restart_partition(self, name: str) -> dict:
        """Restart one partition's subtree; other partitions are not touched."""
        return self._call("restart_partition", name)

    def status(self) -> dict:
        """This node's tree: running partitions with their queues and pids, waiting ones."""
        return self._call("status")
