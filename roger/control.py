"""The control socket: a node's Unix socket server, and `Client` for programs.

Protocol: one JSON object per line each way (UTF-8, ``\\n``-terminated), many
requests per connection, answered in order::

    > {"cmd": "reconfigure_partition", "partition": "myapp", "queues": {"default": 4}}
    < {"ok": true, "node": "web-1", "pid": 4120, "running": {...}, "waiting": {}}
    > {"cmd": "stop_partition"}
    < {"ok": false, "error": "stop_partition: missing field 'partition'"}

`COMMANDS` lists each command with its fields. A malformed request (not
UTF-8, not JSON, not an object, an unknown command, a missing, unexpected
or mistyped field) gets an error reply and the connection stays usable; a
line longer than `MAX_LINE` bytes gets an error reply and the connection is
closed (there is no telling where the next request starts).

Who may connect: the socket file has mode 0600, its directory is created
with mode 0700, and each connection's peer credentials (``SO_PEERCRED``)
are checked: only the node's own user (and root) is served.

Design. The server is a child process of the node's root supervisor, child
id ``"roger.control"`` (partition names cannot contain a dot, so it never
clashes with one). Its main thread runs a `selectors` loop over the
listening socket and every connection, all non-blocking with a buffer per
connection: a client that connects and says nothing, or sends half a line,
costs a buffer and blocks nobody. Requests that need the node (partition
commands go to the root supervisor over the supervision link) or the
cluster (pause, resume, cancel) can take seconds (a partition restart waits
for its running jobs), so they run one at a time on a second thread, the
only one that talks to the root; the loop keeps serving meanwhile. A
connection has at most one request in flight and is not read meanwhile,
which keeps its replies in order and its buffers bounded.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import selectors
import signal
import socket
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import supervision
from roger import config
from roger.errors import ControlError, RogerError
from roger.settings import Settings, check_partition_name, check_queue_name, default_node_name
from supervision import CallTimeout, ChildSpec, SupervisionError, SupervisorGone

__all__ = ["COMMANDS", "Client", "ControlError", "find_socket"]

log = logging.getLogger("roger.control")

CHILD_ID = "roger.control"
MAX_LINE = 64 * 1024  # bytes of one request line, newline excluded
MAX_CONNECTIONS = 64  # more are accepted and told to go away: fds are finite
MAX_PENDING_OUTPUT = 4 * 1024 * 1024  # replies a client does not read before it is dropped
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
SUN_PATH_MAX = 107
NODE_CALL_TIMEOUT = 120.0  # as roger.Node: a partition restart waits for its jobs
CLIENT_TIMEOUT = NODE_CALL_TIMEOUT + 10.0  # longer than the server's own wait
EXIT_NO_SOCKET = 3  # the control server could not create its socket

# cmd -> its fields, all required. Field types are checked by `_FIELD_CHECKS`.
COMMANDS: dict[str, tuple[str, ...]] = {
    "status": (),
    "start_partition": ("partition", "queues"),
    "reconfigure_partition": ("partition", "queues"),
    "stop_partition": ("partition",),
    "restart_partition": ("partition",),
    "pause": ("partition", "queue"),
    "resume": ("partition", "queue"),
    "cancel": ("partition", "job_id"),
    "shutdown": (),
}
_NODE_COMMANDS = ("start_partition", "reconfigure_partition", "stop_partition",
                  "restart_partition")
_CLUSTER_COMMANDS = ("pause", "resume", "cancel")


class RequestError(ValueError):
    """A request the server refuses; its message is the reply's `error`."""


# ------------------------------------------------------------------ requests


def _check_queues(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise RequestError("queues must be a non-empty object of queue name to workers, "
                           'e.g. {"default": 4}')
    for name, workers in value.items():
        check_queue_name(name)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise RequestError(f"queues: workers of {name!r} must be an integer >= 0, "
                               f"got {workers!r}")
    return value


def _check_job_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise RequestError(f"job_id must be a non-empty string, got {value!r}")
    return value


_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "partition": check_partition_name,
    "queue": check_queue_name,
    "queues": _check_queues,
    "job_id": _check_job_id,
}


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Decode and validate one request line; returns ``(cmd, fields)``.

    Raises `RequestError` saying what is wrong, in words fit for the reply.
    """
    try:
        request = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("a request must be UTF-8 text") from None
    except ValueError as e:
        raise RequestError(f"a request must be a JSON object: {e}") from None
    if not isinstance(request, dict):
        raise RequestError(f"a request must be a JSON object, got {_json_type(request)}")
    cmd = request.pop("cmd", None)
    if not isinstance(cmd, str):
        raise RequestError('a request needs a "cmd" string, e.g. {"cmd": "status"}')
    if cmd not in COMMANDS:
        raise RequestError(f"unknown command {cmd[:100]!r}; commands: {', '.join(COMMANDS)}")
    wanted = COMMANDS[cmd]
    unexpected = sorted(set(request) - set(wanted))
    if unexpected:
        raise RequestError(f"{cmd}: unexpected field(s) {', '.join(map(repr, unexpected))}")
    for name in wanted:
        if name not in request:
            raise RequestError(f"{cmd}: missing field {name!r}")
        try:
            _FIELD_CHECKS[name](request[name])
        except ValueError as e:
            raise RequestError(f"{cmd}: {e}") from None
    return cmd, request


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def encode(obj: dict) -> bytes:
    """One protocol line; values JSON cannot express are sent as their `str`."""
    return json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n"


# -------------------------------------------------------------- socket files


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path if a Unix socket can be bound there, else `ControlError`."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ControlError(
            f"control socket path is {size} bytes, more than the {SUN_PATH_MAX} a Unix "
            f"socket allows: {path}; set control_socket (or a shorter state_dir or "
            "node_name)")
    return Path(path)


def is_live(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket `path`.

    Only a refused connection (or no file) means nobody listens: any other
    failure (a full backlog, no permission) counts as live, because a live
    node's socket must never be taken over.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
        return True


def claim_socket_path(path: str | os.PathLike[str]) -> Path:
    """Make `path` ready for a new control socket, or raise `ControlError`.

    Creates its directory (mode 0700) when missing, removes a stale socket a
    dead node left behind, and refuses a live one or any other kind of file.
    An existing directory keeps its mode (it may be shared, like /tmp): the
    socket's own mode and the peer check protect it.
    """
    path = check_socket_path(path)
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"control socket path {path} exists and is not a socket")
    if is_live(path):
        raise ControlError(f"another node is serving the control socket {path}; "
                           "give this node another node_name or control_socket")
    log.info("removing the stale control socket %s of a node that is gone", path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return path


def bind_socket(path: str | os.PathLike[str]) -> socket.socket:
    """A non-blocking listening socket at `path`, mode 0600."""
    path = claim_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0600 from birth: no window in which another
    # user could connect. This process has one thread here, so the
    # process-wide umask is safe to change.
    old_umask = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ControlError(f"another node took the control socket {path} meanwhile") from None
        raise ControlError(f"cannot create the control socket {path}: {e}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def allowed_uid(uid: int) -> bool:
    """The node's own user may control it; root may anyway, so it is not refused."""
    return uid in (os.getuid(), 0)


def find_socket(settings: Settings | None = None) -> Path:
    """The control socket to talk to, per `settings` (default: the configured ones).

    When neither ``node_name`` nor ``control_socket`` was configured, the
    node name defaults to this very process's ``<host>-<pid>``, which names
    no node: then the one live socket in ``state_dir`` is used, and several
    (or none) is an error that says how to choose.
    """
    settings = settings or config.get_settings()
    unconfigured = settings.state_dir / f"{default_node_name()}.sock"
    if settings.control_socket != unconfigured:
        return settings.control_socket
    candidates = sorted(settings.state_dir.glob("*.sock")) if settings.state_dir.is_dir() else []
    live = [p for p in candidates if is_live(p)]
    if len(live) == 1:
        return live[0]
    if not live:
        raise ControlError(f"no running node found (no live control socket in "
                           f"{settings.state_dir}); name it with --node-name or "
                           "--control-socket")
    names = ", ".join(p.stem for p in live)
    raise ControlError(f"several nodes run here ({names}); choose one with --node-name "
                       "or --control-socket")


# -------------------------------------------------------------------- server


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
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE and friends: the next attempt may succeed
            log.warning("control socket: accept failed: %s", e)
            return
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


class NodeBackend:
    """Carries out requests in the control process: node commands go to the root.

    Runs on the server's backend thread, the only user of the link to the
    root supervisor (a `Link` serves one caller at a time).
    """

    def __init__(self, settings: Settings, link: supervision.Link | None = None) -> None:
        self.settings = settings
        self.link = link or supervision.parent()

    def __call__(self, cmd: str, fields: dict) -> dict:
        if cmd == "status":
            return self.status()
        if cmd in _NODE_COMMANDS:
            args = [fields["partition"]] + ([fields["queues"]] if "queues" in fields else [])
            return self._node(cmd, *args)
        if cmd in _CLUSTER_COMMANDS:
            return self._cluster(cmd, fields)
        if cmd == "shutdown":
            self._node("stop")
            return {}
        raise RequestError(f"unknown command {cmd!r}")

    def _node(self, *payload: Any) -> Any:
        return self.link.call(payload, NODE_CALL_TIMEOUT)

    def status(self) -> dict:
        """The root's status, plus the node's own processes (control, system)."""
        status = dict(self._node("status"))
        # The node's own processes are the root's children named "roger.<x>";
        # partition names cannot contain a dot.
        status["processes"] = {
            str(c.id): {"pid": c.pid, "state": c.state, "restarts": c.restarts}
            for c in self._node("which_children") if "." in str(c.id)
        }
        status["control_socket"] = str(self.settings.control_socket)
        return status

    def _cluster(self, cmd: str, fields: dict) -> dict:
        fn = _cluster_function(cmd)
        second = fields["job_id"] if cmd == "cancel" else fields["queue"]
        result = fn(fields["partition"], second)
        return {} if result is None else {"result": result}


def _cluster_function(name: str) -> Callable[..., Any]:
    """`roger.<name>` (pause, resume, cancel), looked up when needed.

    They belong to roger's cluster layer; a build without it answers
    "not available" instead of failing to import.
    """
    import roger

    fn = getattr(roger, name, None)
    if not callable(fn):
        raise RequestError(f"{name} is not available in this version of roger")
    return fn


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
    stop_r, stop_w = socket.socketpair()
    stop_r.setblocking(False)
    stop_w.setblocking(False)
    # SIGTERM (from the root, at shutdown) ends the loop so the socket file
    # is removed; the wakeup fd turns the signal into a readable byte.
    signal.set_wakeup_fd(stop_w.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _noop)
    server = ControlServer(listener, NodeBackend(settings), stop_fd=stop_r)
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


def _noop(signum: int, frame: Any) -> None:
    """Signals only wake the loop, through the wakeup fd."""


# -------------------------------------------------------------------- client


class Client:
    """Talks to a node over its control socket.

    >>> with Client(node.settings.control_socket) as ctl:
    ...     ctl.request("reconfigure_partition", partition="myapp", queues={"default": 8})
    ...     print(ctl.request("status")["running"])

    `path` defaults to `find_socket()` of the configured settings. One
    connection serves many requests; `request` raises `ControlError` when
    the node answers ``ok: false``, cannot be reached, or does not answer
    within `timeout` seconds (None: wait as long as it takes).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 timeout: float | None = CLIENT_TIMEOUT) -> None:
        self.path = Path(path) if path is not None else find_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def connect(self) -> Client:
        """Connect now (`request` connects on first use anyway)."""
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(os.fspath(check_socket_path(self.path)))
            except OSError as e:
                sock.close()
                raise ControlError(f"cannot connect to the control socket {self.path}: "
                                   f"{e.strerror or e} (is the node running?)") from None
            self._sock = sock
            self._buf.clear()
        return self

    def request(self, cmd: str, **fields: Any) -> dict:
        """Send ``{"cmd": cmd, **fields}``; return the reply (``ok`` is true)."""
        sock = self.connect()._sock
        assert sock is not None
        try:
            sock.sendall(encode({"cmd": cmd, **fields}))
            reply = json.loads(self._read_line(sock))
        except (OSError, ValueError) as e:
            # After a timeout a late reply would answer the next request:
            # start over on a new connection instead.
            self.close()
            what = "no reply in time" if isinstance(e, TimeoutError) else str(e)
            raise ControlError(f"control socket {self.path}: {cmd}: {what}") from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else repr(reply)
            raise ControlError(f"{cmd}: {error}", reply if isinstance(reply, dict) else None)
        return reply

    def _read_line(self, sock: socket.socket) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                return line
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the node closed the connection")
            self._buf += data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._sock is not None else "not connected"
        return f"<roger.control.Client {str(self.path)!r} {state}>"
