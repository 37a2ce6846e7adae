"""A RabbitMQ node of the benchmark's own, and the CLI view of any node.

The shared broker of this machine (``rabbit@localhost``) has a descriptor
limit of about 900, too few for a thousand quorum-queue partitions, and
other users. `IsolatedRabbit` starts a node only this benchmark uses:

- its own node name (``roger-bench-<pid>@localhost``), AMQP port,
  distribution port and CLI distribution ports (all on 127.0.0.1), none of
  which the shared node uses;
- its own data, log and pid files, config file and env file under a
  temporary directory (so nothing of /etc/rabbitmq applies), no plugins,
  and its own Erlang cookie (``$HOME`` points there);
- a raised descriptor limit: ``ulimit -n`` as high as the hard limit allows.

It runs as a child process in its own session. `stop` (also called from a
``finally``, from `atexit` and on SIGTERM) asks it to stop, kills its
process group if it does not, and deletes the directory. Never touches the
shared node.

`RabbitNode` runs ``rabbitmqctl`` / ``rabbitmq-diagnostics`` against a
node and reads what the scale benchmark needs: memory, file descriptors of
the Erlang VM (and how many of them are quorum-queue segment files),
queues, connections. `shared()` is the machine's default node.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError

FD_LIMIT = 65536  # asked for; the hard limit of the benchmark's shell may cap it
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
# Debian's /usr/sbin/rabbitmq* wrappers switch to the rabbitmq user (and its
# cookie); the scripts behind them run as whoever calls them.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin",)


def script(name: str) -> str:
    """The RabbitMQ script `name`, preferring the one that runs as the caller."""
    for base in SCRIPT_DIRS:
        path = os.path.join(base, name)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed (not on PATH nor in {SCRIPT_DIRS})")
    return found


class RabbitNode:
    """A RabbitMQ node as its CLI sees it. `name` None: the CLI's default node."""

    def __init__(self, url: str, name: str | None = None, env: dict[str, str] | None = None,
                 label: str = "RabbitMQ", tools: dict[str, str] | None = None) -> None:
        self.url = url
        self.name = name
        self.env = env
        self.label = label
        # The shared node is reached through the PATH's wrappers (they know its cookie).
        self.tools = tools or {}

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name or 'default'} {self.url}>"

    def run(self, tool: str, *args: str, timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.tools.get(tool, tool), *(["-n", self.name] if self.name else []), *args]
        env = {**os.environ, **self.env} if self.env is not None else None
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(argv[:4])} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise BenchError(f"cannot run {argv[0]}: {e}") from None
        if check and done.returncode != 0:
            raise BenchError(f"{' '.join(argv[:4])} failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-400:]}")
        return done

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        return self.run("rabbitmqctl", *args, timeout=timeout).stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.ctl("status", "--formatter", "json")))

    def pid(self) -> int:
        """The Erlang VM's OS pid."""
        return int(self.status()["pid"])

    def memory(self) -> dict[str, float]:
        """RabbitMQ's own memory accounting in MiB: ``total`` (by its calculation strategy,
        as the memory alarm sees it) and each category of ``memory_breakdown``."""
        status = self.status()
        mem = status["memory"]
        strategy = str(mem.get("strategy", "rss"))
        totals = mem.get("total", {})
        total = totals.get(strategy, totals.get("rss", 0)) if isinstance(totals, dict) else totals
        out = {k: float(v) / 2**20 for k, v in mem.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["total"] = float(total) / 2**20
        if isinstance(totals, dict) and "erlang" in totals:  # what the VM allocated
            out["erlang"] = float(totals["erlang"]) / 2**20
        return out

    def file_descriptors(self) -> dict[str, int]:
        """The VM's open descriptors (from /proc; as root), split by kind, and its limit.

        ``quorum_files``: files under the node's quorum (Ra) data directory,
        i.e. quorum queues' WAL and segment files; ``other_files``: the rest
        (classic queue indexes, message stores, Mnesia, logs, code).
        """
        status = self.status()
        pid = int(status["pid"])
        raft_dir = str(status.get("raft_data_directory") or "")
        counts = {"total": 0, "sockets": 0, "quorum_files": 0, "other_files": 0}
        fd_dir = f"/proc/{pid}/fd"
        for entry in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, entry))
            except OSError:
                continue
            counts["total"] += 1
            if target.startswith("socket:"):
                counts["sockets"] += 1
            elif target.startswith("/"):
                key = "quorum_files" if raft_dir and target.startswith(raft_dir) else "other_files"
                counts[key] += 1
        fds = status.get("file_descriptors", {})
        counts["limit"] = int(fds.get("total_limit", 0))
        counts["rabbit_used"] = int(fds.get("total_used", 0))
        return counts

    def queues(self, marker: str = "") -> list[tuple[str, str]]:
        """(name, type) of every queue whose name contains `marker`."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "type",
                       timeout=180)
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return [(r[0].strip(), r[1].strip() if len(r) > 1 else "?") for r in rows
                if marker in r[0]]

    def exchanges(self, marker: str = "") -> list[str]:
        out = self.ctl("list_exchanges", "-q", "--no-table-headers", "name")
        return [x.strip() for x in out.splitlines() if x.strip() and marker in x]

    def connection_ports(self) -> list[int]:
        """The client-side port of every AMQP connection the node has."""
        out = self.ctl("list_connections", "-q", "--no-table-headers", "peer_port")
        return [int(x) for x in out.split() if x.strip().isdigit()]


def shared(url: str) -> RabbitNode:
    """The machine's default RabbitMQ node, reached by the PATH's CLI wrappers."""
    return RabbitNode(url, label="shared RabbitMQ")


def _free_port(start: int, avoid: set[int]) -> int:
    for port in range(start, start + 200):
        if port in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free port from {start}")


class IsolatedRabbit(RabbitNode):
    """A RabbitMQ node of our own: `start()`, always `stop()` (or use as a context manager)."""

    def __init__(self, port: int = 5699, fd_limit: int = FD_LIMIT, node: str | None = None,
                 cookie: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="roger-rabbit-"))
        # A cluster's nodes share one `cookie` (see `benchmarks.cluster`).
        node = node or f"roger-bench-{os.getpid()}@localhost"
        # Away from the shared node's 5672 / 25672 / 35672-35682 and management's 15672.
        amqp_port = _free_port(port, {5672, 15672, 25672})
        dist_port = _free_port(amqp_port + 20000, {25672})
        ctl_port = _free_port(dist_port + 10000, set(range(35672, 35683)))
        self.fd_limit = fd_limit
        self.cookie = cookie or os.urandom(16).hex().upper()
        home = self.dir / "home"
        home.mkdir()
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{amqp_port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n")
        # Read instead of /etc/rabbitmq/rabbitmq-env.conf (which names the shared node).
        (self.dir / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        env = {
            "HOME": str(home),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_port + 10),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        tools = {t: script(t) for t in ("rabbitmqctl", "rabbitmq-diagnostics",
                                          "rabbitmq-queues")}
        super().__init__(f"amqp://guest:guest@127.0.0.1:{amqp_port}//", node, env,
                         label=f"isolated RabbitMQ ({node}, port {amqp_port})", tools=tools)
        self.port = amqp_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._atexit = False

    def start(self) -> IsolatedRabbit:
        server = script("rabbitmq-server")
        # `ulimit -n N` fails above the hard limit: then take the hard limit.
        command = (f"ulimit -n {self.fd_limit} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; "
                   f"exec {server}")
        log = open(self.dir / "server.out", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                ["bash", "-c", command], env={**os.environ, **(self.env or {})},
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"the isolated RabbitMQ exited with {self.proc.returncode} "
                                 f"while starting: {self._tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the isolated RabbitMQ did not start within "
                                 f"{START_TIMEOUT:g} s: {self._tail()}")
            done = self.run("rabbitmqctl", "await_startup", "--timeout",
                            str(max(1, int(min(left, 30)))), timeout=min(left, 30) + 15,
                            check=False)
            if done.returncode == 0:
                return self
            time.sleep(1.0)

    def _tail(self) -> str:
        parts = []
        for path in [self.dir / "server.out", *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(path.read_bytes()[-600:].decode(errors="replace"))
        return " | ".join(p.strip() for p in parts if p.strip())[-1200:]

    def stop(self) -> None:
        """Stop the node (gracefully, else by killing its process group) and delete its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    self.run("rabbitmqctl", "stop", timeout=STOP_TIMEOUT, check=False)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
            except BenchError:
                pass
            finally:
                # The VM, epmd-free: everything in its session (bash exec'd the server
                # script, which runs erl; erl_child_setup and inet_gethost are its children).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False

    def __enter__(self) -> IsolatedRabbit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def isolated(port: int = 5699, fd_limit: int = FD_LIMIT) -> Iterator[IsolatedRabbit]:
    """An `IsolatedRabbit`, started, stopped and deleted on exit (on SIGTERM too)."""
    node = IsolatedRabbit(port, fd_limit)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(143)  # unwinds through the finally below

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield node.start()
    finally:
        node.stop()
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
