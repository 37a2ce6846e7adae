"""The control server: the process behind a node's control socket.

It is a child process of the node's root supervisor, child id
``"roger.control"`` (see `control_spec`). Its main thread runs
a `selectors` loop over the listening socket and every connection, all
non-blocking with a buffer per connection: a client that connects and says
nothing, or sends half a line, costs a buffer and blocks nobody. Requests
that need the node (partition commands go to the root supervisor over the
supervision link) or the cluster (pause, resume, cancel) can take seconds (a
partition restart waits for its running jobs), so they run one at a time on
a second thread, the only one that talks to the root; the loop keeps serving
meanwhile. A connection has at most one request in flight and is not read
meanwhile, which keeps its replies in order and its buffers bounded.
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import supervision
from roger import config
from roger.control import (
    CHILD_ID,
    CLUSTER_COMMANDS,
    MAX_LINE,
    NODE_COMMANDS,
    RequestError,
    allowed_uid,
    bind_socket,
    encode,
    node_call_timeout,
    parse_request,
    peer_uid,
)
from roger.errors import ControlError, RogerError
from roger.node import root
from roger.partition.coordination import cancel, pause, resume
from roger.settings import Settings
from supervision import CallTimeout, ChildSpec, SupervisionError, SupervisorAPI, SupervisorGone
from supervision.signals import Wakeup

__all__ = ["ControlServer", "NodeBackend", "control_spec", "run_control_server"]

log = logging.getLogger("roger.control")

MAX_CONNECTIONS = 64  # more are accepted and told to go away: fds are finite
MAX_PENDING_OUTPUT = 4 * 1024 * 1024  # replies a client does not read before it is dropped
EXIT_NO_SOCKET = 3  # the control server could not create its socket


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    busy: bool = False  # a request of this connection is with the backend
    closing: bool = False  # close once wbuf is flushed; read nothing more
    events: int = 0  # what the selector watches for (0: not registered)


class ControlServer:
    """The socket loop: accepts, reads lines, replies; `backend` does the work.

    `backend(cmd, fields) -> dict` runs on one background thread, one
    request at a time; its dict is merged into ``{"ok": true}``, an
    exception becomes ``{"ok": false, "error": str(exc)}``.
    """

    def __init__(self, listener: socket.socket, backend: Callable[[str, dict], dict],
                 stop_fd: socket.socket | None = None) -> None:
        self.listener = listener
        self.backend = backend
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        self.shutting_down = False
        self._stopped = False
        self._jobs: queue.Queue[tuple[_Conn, str, dict] | None] = queue.Queue()
        self._results: deque[tuple[_Conn, dict]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop_fd = stop_fd
        self._thread = threading.Thread(target=self._work, name="roger-control-backend",
                                        daemon=True)

    def run(self) -> None:
        """Serve until `stop_fd` becomes readable (a signal) or `stop()`."""
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "results")
        if self._stop_fd is not None:
            self.sel.register(self._stop_fd, selectors.EVENT_READ, "stop")
        self._thread.start()
        try:
            while not self._stopped:
                for key, events in self.sel.select():
                    self._on_ready(key, events)
        finally:
            self.close()

    def stop(self) -> None:
        """End `run()` (from the loop's own thread)."""
        self._stopped = True

    def close(self) -> None:
        self._jobs.put(None)
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ the loop

    def _on_ready(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data == "accept":
            self._accept()
        elif key.data == "results":
            self._deliver_results()
        elif key.data == "stop":
            self._stopped = True
        else:
            conn = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ and conn.sock.fileno() in self.conns:
                self._read(conn)

    def _accept(self) -> None:
        # Empty the backlog: a connect to a Unix socket with a full backlog
        # fails at once (EAGAIN) rather than waiting its turn.
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: the next attempt may succeed
                log.warning("control socket: accept failed: %s", e)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        uid = peer_uid(sock)
        if not allowed_uid(uid):
            log.warning("control socket: refused a connection from uid %d", uid)
            self._refuse(sock, "permission denied: only the node's own user may control it")
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            self._refuse(sock, f"too many connections (limit {MAX_CONNECTIONS})")
            return
        conn = _Conn(sock)
        self.conns[sock.fileno()] = conn
        self._update_interest(conn)

    def _refuse(self, sock: socket.socket, why: str) -> None:
        try:
            sock.send(encode({"ok": False, "error": why}))
        except OSError:
            pass
        sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.rbuf += data
        self._process(conn)

    def _process(self, conn: _Conn) -> None:
        """Answer complete lines until one needs the backend."""
        while not conn.busy and not conn.closing:
            end = conn.rbuf.find(b"\n")
            if end < 0:
                if len(conn.rbuf) > MAX_LINE:
                    conn.rbuf.clear()
                    conn.closing = True
                    self._reply(conn, {"ok": False, "error":
                                       f"request line longer than {MAX_LINE} bytes; "
                                       "closing this connection"})
                break
            line = bytes(conn.rbuf[:end])
            del conn.rbuf[:end + 1]
            if len(line) > MAX_LINE:
                self._reply(conn, {"ok": False, "error": f"request line longer than "
                                                         f"{MAX_LINE} bytes"})
                continue
            if line.strip():
                self._request(conn, line)
        self._update_interest(conn)

    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            cmd, fields = parse_request(line)
        except RequestError as e:
            self._reply(conn, {"ok": False, "error": str(e)})
            return
        except Exception as e:  # a parser bug must cost one reply, never the server
            log.exception("control socket: could not parse a request")
            self._reply(conn, {"ok": False, "error": f"bad request: {type(e).__name__}"})
            return
        if self.shutting_down:
            self._reply(conn, {"ok": False, "error": "the node is shutting down"})
            return
        if cmd == "shutdown":
            # Reply first: once the node stops, nobody would answer.
            self.shutting_down = True
            self._reply(conn, {"ok": True, "shutting_down": True})
            self._flush(conn)
            log.info("control socket: shutdown requested")
        else:
            conn.busy = True
        self._jobs.put((conn, cmd, fields))

    def _reply(self, conn: _Conn, reply: dict) -> None:
        conn.wbuf += encode(reply)
        if len(conn.wbuf) > MAX_PENDING_OUTPUT:
            log.warning("control socket: dropping a client that does not read its replies")
            self._drop(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        while conn.wbuf:
            try:
                sent = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            del conn.wbuf[:sent]
        if conn.closing and not conn.wbuf:
            self._drop(conn)
            return
        self._update_interest(conn)

    def _update_interest(self, conn: _Conn) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        events = 0
        # Not read while a request is in flight or replies wait: the client's
        # next requests wait in the kernel, which bounds what we buffer.
        if not conn.busy and not conn.closing and not conn.wbuf:
            events |= selectors.EVENT_READ
        if conn.wbuf:
            events |= selectors.EVENT_WRITE
        if events == conn.events:
            return
        # A selector cannot hold a socket with no interest: a parked
        # connection (request in flight) is unregistered until its reply.
        if not events:
            self.sel.unregister(conn.sock)
        elif not conn.events:
            self.sel.register(conn.sock, events, conn)
        else:
            self.sel.modify(conn.sock, events, conn)
        conn.events = events

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or self.conns.get(fd) is not conn:
            return
        del self.conns[fd]
        conn.closing = True  # stops `_process` working on its buffered lines
        if conn.events:
            self.sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()

    # ------------------------------------------------------ backend thread

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, cmd, fields = job
            try:
                reply = {"ok": True, **(self.backend(cmd, fields) or {})}
            except Exception as e:
                reply = {"ok": False, "error": _describe_error(e)}
            self._results.append((conn, reply))
            try:
                self._wake_w.send(b"r")
            except (BlockingIOError, OSError):
                pass  # the loop is already woken (or closed)

    def _deliver_results(self) -> None:
        try:
            self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            pass
        while self._results:
            conn, reply = self._results.popleft()
            if not conn.busy:
                continue  # shutdown: its reply went out already
            conn.busy = False
            if conn.sock.fileno() not in self.conns:
                continue  # the client left before its answer
            self._reply(conn, reply)
            self._flush(conn)
            self._process(conn)


def _describe_error(e: Exception) -> str:
    if isinstance(e, CallTimeout):
        return f"the node did not answer in time: {e}"
    if isinstance(e, SupervisorGone):
        return f"the node is gone: {e}"
    if isinstance(e, ValueError | RogerError | SupervisionError | LookupError):
        return str(e)
    log.warning("control socket: request failed", exc_info=e)
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------- the node's side


_CLUSTER_FUNCTIONS: dict[str, Callable[[str, str], None]] = {
    "pause": pause, "resume": resume, "cancel": cancel}


class NodeBackend:
    """Carries out requests in the control process: node commands go to the root.

    Runs on the server's backend thread, the only user of the link to the
    root supervisor (a `Link` serves one caller at a time).
    """

    def __init__(self, settings: Settings, node: SupervisorAPI | None = None) -> None:
        self.settings = settings
        self.root = node or supervision.parent_supervisor()

    def __call__(self, cmd: str, fields: dict) -> dict:
        if cmd == "status":
            return self.status()
        if cmd in NODE_COMMANDS:
            return self._node(cmd, fields)
        if cmd in CLUSTER_COMMANDS:
            return self._cluster(cmd, fields)
        if cmd == "shutdown":
            self.root.request_shutdown(self._timeout())
            return {}
        raise RequestError(f"unknown command {cmd!r}")

    def _timeout(self) -> float:
        return node_call_timeout(self.settings.shutdown_timeout)

    def _node(self, cmd: str, fields: dict) -> dict:
        name, node, timeout = fields["partition"], self.root, self._timeout()
        if cmd == "start_partition":
            return root.start_partition(node, name, fields["queues"], timeout)
        if cmd == "reconfigure_partition":
            return root.reconfigure_partition(node, name, fields["queues"], timeout)
        if cmd == "stop_partition":
            return root.stop_partition(node, name, timeout)
        return root.restart_partition(node, name, timeout)

    def status(self) -> dict:
        """The root's status, plus the node's own processes (control, system)."""
        status = dict(root.node_status(self.root, self._timeout()))
        # The node's own processes are the root's children named "roger.<x>";
        # partition names cannot contain a dot.
        status["processes"] = {
            str(c.id): {"pid": c.pid, "state": c.state, "restarts": c.restarts}
            for c in self.root.which_children(self._timeout()) if "." in str(c.id)
        }
        status["control_socket"] = str(self.settings.control_socket)
        return status

    def _cluster(self, cmd: str, fields: dict) -> dict:
        fn = _CLUSTER_FUNCTIONS[cmd]
        second = fields["job_id"] if cmd == "cancel" else fields["queue"]
        result = fn(fields["partition"], second)
        return {} if result is None else {"result": result}


def control_spec(settings: Settings) -> ChildSpec:
    """The root supervisor's child that serves the control socket."""
    return ChildSpec(CHILD_ID, run_control_server, args=(settings,), restart="permanent",
                     shutdown=5.0, notify_ready=True, start_timeout=15.0)


def run_control_server(settings: Settings) -> None:
    """Process main of the control server: bind, report ready, serve until SIGTERM."""
    # roger.pause & co., called from here, use the node's settings.
    config.configure(settings)
    path = settings.control_socket
    try:
        listener = bind_socket(path)
    except ControlError as e:
        log.error("%s", e)
        raise SystemExit(EXIT_NO_SOCKET) from None
    inode = os.stat(path).st_ino
    # SIGTERM (from the root, at shutdown) ends the loop so the socket file
    # is removed: the wakeup turns the signal into a readable byte.
    wakeup = Wakeup()
    server = ControlServer(listener, NodeBackend(settings), stop_fd=wakeup.reader)
    log.info("control socket listening at %s", path)
    supervision.ready()
    try:
        server.run()
    finally:
        listener.close()
        _unlink_if_ours(path, inode)


def _unlink_if_ours(path: Path, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass

