"""`roger.Node`: a node's process tree, embeddable or standalone.

`Node` builds the root supervisor (`roger.node.root`) with the node's own
processes as its first children (the control server, the system process,
the metrics server when `metrics_port` is set and the status page's server
when `http_port` is), and runs it in this process (`run`) or in a child
(`start`).
"""

from __future__ import annotations

import threading
from typing import Any

from multiprocess.connection import wait

from roger import control, registry
from roger.amqp import connection
from roger.node import metrics_server, web
from roger.node import root as root_requests
from roger.node.control_server import control_spec
from roger.node.root import CALL_TIMEOUT, Root
from roger.node.system import system_spec
from roger.partition import periodic
from roger.settings import Settings
from supervision import Supervisor, SupervisorAPI, SupervisorHandle

__all__ = ["Node"]


def _start_root(sup: Supervisor, timeout: float) -> SupervisorHandle:
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
        wait([started["handle"].sentinel])

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
        self._handle: SupervisorHandle | None = None

    def __repr__(self) -> str:
        where = (f"root pid {self._handle.pid}" if self._handle is not None
                 else "running in this process" if self._api is not None else "not running")
        return f"<Node {self.settings.node_name!r} {where}>"

    def _root(self) -> Root:
        # Import job modules once in the root: typos fail the node at start,
        # and every forked process shares the imported code.
        registry.import_modules(self.settings.imports)
        # Periodic entries name job classes: checked once those are imported.
        periodic.check(self.settings)
        connection.warm_up(self.settings)
        # A live node on our control socket (or a path too long for one)
        # fails here, in the caller, with a clear ControlError.
        control.claim_socket_path(self.settings.control_socket)
        web.check_port(self.settings)  # the status page's port, when it has one
        # The control server is the first child: the socket is there before
        # any partition starts, and a partition waiting for the broker never
        # keeps the operator out.
        children = [control_spec(self.settings), system_spec(self.settings)]
        if self._serves_metrics():
            metrics_server.check_port(self.settings)  # a taken port fails here, clearly
            children.append(metrics_server.metrics_spec(self.settings))
        page = web.web_spec(self.settings)
        if page is not None:
            children.append(page)
        return Root(self.settings, tuple(children))

    def _serves_metrics(self) -> bool:
        """Whether the node runs its own metrics server (on `metrics_port`).

        Not when the status page's port is the same: that server mounts
        ``/metrics`` itself (`roger.node.exposition`).
        """
        port = self.settings.metrics_port
        return port is not None and port != self.settings.http_port

    def run(self) -> None:
        """Serve in this process until SIGTERM/SIGINT (or `stop()` from another thread)."""
        root = self._root()
        self._api = root.sup
        try:
            root.sup.run()
        finally:
            self._api = None

    def start(self, timeout: float | None = None) -> Node:
        """Start the tree in a child process; returns once the partitions are consuming.

        With `idle_after` > 0 (the default) partitions start idle: this returns
        once the node's watcher consumes their queues, and each wakes when a
        message comes.
        """
        if self._handle is not None and self._handle.is_alive():
            raise RuntimeError("this node is already started")
        root = self._root()
        self._handle = _start_root(root.sup, timeout or root.start_timeout() + 30.0)
        self._api = self._handle
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """Shut down gracefully (running jobs get `shutdown_timeout`); returns the exit code."""
        if self._handle is None:
            if self._api is not None:  # run() in another thread of this process
                self._api.request_shutdown(CALL_TIMEOUT)
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

    def _root_api(self) -> SupervisorAPI:
        if self._api is None:
            raise RuntimeError("this node is not running: call start() or run() first")
        return self._api

    def start_partition(self, name: str, queues: dict[str, int]) -> dict:
        """Start serving a partition; returns once its consumers (or the watcher) subscribed."""
        return root_requests.start_partition(self._root_api(), name, queues)

    def reconfigure_partition(self, name: str, queues: dict[str, int]) -> dict:
        """Make a partition's queues exactly `queues` (left-out queues stop; 0 stops consuming)."""
        return root_requests.reconfigure_partition(self._root_api(), name, queues)

    def stop_partition(self, name: str) -> dict:
        """Stop serving a partition on this node (its running jobs finish or are requeued)."""
        return root_requests.stop_partition(self._root_api(), name)

    def restart_partition(self, name: str) -> dict:
        """Restart one partition's subtree; other partitions are not touched."""
        return root_requests.restart_partition(self._root_api(), name)

    def status(self) -> dict:
        """This node's tree: running partitions with their queues and pids, waiting ones."""
        return root_requests.node_status(self._root_api(), CALL_TIMEOUT)
