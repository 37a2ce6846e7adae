"""The control socket: its protocol, its socket file, and `Client` for programs.

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

The server lives in `roger.node.control_server`: a child process of the node's
root supervisor, child id ``"roger.control"`` (partition names cannot
contain a dot, so it never clashes with one).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roger import config
from roger.errors import ControlError
from roger.settings import (
    Settings,
    check_partition_name,
    check_queue_name,
    check_queues,
    default_node_name,
)

__all__ = ["COMMANDS", "Client", "ControlError", "find_socket"]

log = logging.getLogger("roger.control")

CHILD_ID = "roger.control"
MAX_LINE = 64 * 1024  # bytes of one request line, newline excluded
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
SUN_PATH_MAX = 107
NODE_CALL_TIMEOUT = 120.0  # as roger.Node, plus shutdown_timeout: see `node_call_timeout`
CLIENT_TIMEOUT = NODE_CALL_TIMEOUT + 10.0  # longer than the server's own wait

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
# Forwarded to the root supervisor; and the cluster-wide ones, to roger.<cmd>.
NODE_COMMANDS = ("start_partition", "reconfigure_partition", "stop_partition",
                  "restart_partition")
CLUSTER_COMMANDS = ("pause", "resume", "cancel")


class RequestError(ValueError):
    """A request the server refuses; its message is the reply's `error`."""


def node_call_timeout(shutdown_timeout: float) -> float:
    """How long the server waits for its node: restarting or stopping a
    partition first waits up to `shutdown_timeout` for its running jobs."""
    return NODE_CALL_TIMEOUT + shutdown_timeout


def client_timeout(shutdown_timeout: float) -> float:
    """A client's wait: longer than the server's, so the node's error arrives."""
    return node_call_timeout(shutdown_timeout) + 10.0


# ------------------------------------------------------------------ requests


def _check_job_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise RequestError(f"job_id must be a non-empty string, got {value!r}")
    return value


_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "partition": check_partition_name,
    "queue": check_queue_name,
    "queues": check_queues,
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
    except RecursionError:  # "[[[[..." within the line cap: the decoder gives up
        raise RequestError("a request must be a JSON object, not nested this deep") from None
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
    sock.listen(64)
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
            self._sock = self._connect(os.fspath(check_socket_path(self.path)))
            self._buf.clear()
        return self

    def _connect(self, path: str) -> socket.socket:
        # A full backlog (a burst of clients) fails a Unix connect at once
        # with EAGAIN instead of queueing it: try again within the timeout.
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 10.0)
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
                return sock
            except BlockingIOError:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise ControlError(f"the node at {self.path} is not accepting "
                                       "connections (too busy?)") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            except OSError as e:
                sock.close()
                raise ControlError(f"cannot connect to the control socket {self.path}: "
                                   f"{e.strerror or e} (is the node running?)") from None

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
