"""Processes under test: start them, find their trees in /proc, measure them, end them.

Every system under test runs in a subprocess started here, in its own
session, and `Spawned.stop` always ends it and everything it forked:
roger's supervisors give each child its own process group, so killing a
group is not enough; the whole tree is found by parent pid and killed.
Waits are bounded everywhere.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any
from urllib.parse import urlsplit

from benchmarks.common import BROKER_URL, ROOT, BenchError

PAGE_KB = 1024


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of `pid`, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None  # dead, only waiting to be reaped
    return int(fields[1]), int(fields[19])


def _scan() -> tuple[dict[int, list[int]], dict[int, int]]:
    """(parent pid -> child pids, pid -> start time) of every process."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    return children, starts


def levels(root: int) -> dict[int, int]:
    """`root` and all its descendants: pid -> depth below `root` (root: 0)."""
    children, starts = _scan()
    if root not in starts:
        return {}
    found, todo = {}, [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        found[pid] = depth
        todo.extend((c, depth + 1) for c in children.get(pid, ()))
    return found


def tree(root: int) -> dict[int, int]:
    """`root` and all its descendants: pid -> start time (to recognise reused pids)."""
    _, starts = _scan()
    return {pid: starts[pid] for pid in levels(root) if pid in starts}


def memory(pids: Sequence[int]) -> dict[str, float]:
    """Summed USS, PSS and RSS in MiB of `pids`, from /proc/PID/smaps_rollup.

    USS is what the processes alone hold (private pages: freed if they
    exited); PSS also charges each its share of pages shared with others.
    """
    total = {"uss": 0, "pss": 0, "rss": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue  # gone meanwhile
        for line in lines:
            key, _, rest = line.partition(":")
            kb = int(rest.split()[0]) if rest.strip() and rest.split()[0].isdigit() else 0
            if key in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"):
                total["uss"] += kb
            elif key == "Pss":
                total["pss"] += kb
            elif key == "Rss":
                total["rss"] += kb
    return {k: v / PAGE_KB for k, v in total.items()}


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of `pids`, including their reaped children, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def tcp_client_ports(pids: Sequence[int], remote_port: int) -> set[int]:
    """Local ports of the established TCP connections that `pids` hold to `remote_port`.

    Matches the sockets in /proc/PID/fd against /proc/net/tcp{,6}: with the
    broker's `list_connections peer_port` this tells which of its connections
    are one process tree's, on a broker that others use too.
    """
    by_inode: dict[str, int] = {}
    for fields in _tcp_sockets():
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and _port(remote) == remote_port:
            by_inode[inode] = _port(local)
    ports = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in by_inode:
                ports.add(by_inode[target[8:-1]])
    return ports


def _tcp_sockets() -> Iterator[list[str]]:
    """The machine's TCP sockets, a row of /proc/net/tcp{,6} each, split into fields."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            yield row.split()


def _port(address: str) -> int:
    """The port of a /proc/net/tcp address (``HEXADDR:HEXPORT``)."""
    return int(address.rsplit(":", 1)[1], 16)


def broker_pids(url: str = BROKER_URL) -> list[int]:
    """RabbitMQ's Erlang VM (beam.smp) on this machine, to charge it its CPU time.

    The one listening on the port of `url` when it can be told (the machine
    may run other RabbitMQ nodes, e.g. other users' isolated ones, which come
    and go); else every Erlang VM.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "beam.smp":
                        found.append(int(entry))
            except OSError:
                continue
    serving = [pid for pid in found if _listens_on(pid, urlsplit(url).port or 5672)]
    return serving or found


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (from /proc)."""
    listening = {f"socket:[{fields[9]}]" for fields in _tcp_sockets()
                 if fields[3] == "0A" and _port(fields[1]) == port}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                return True
        except OSError:
            continue
    return False


class CpuMeter:
    """CPU time of a process tree and of the broker, between marks.

    With it a throughput figure says what a job costs, and whether a run was
    bound by CPU (both cores busy) or by waiting (round trips, prefetch).
    """

    def __init__(self, root: int, consumers: bool = False, broker_url: str = BROKER_URL) -> None:
        self.root = root
        self.broker = broker_pids(broker_url)
        self.marks: list[tuple[float, int, float, float]] = []  # (time, jobs, tree s, broker s)
        # With `consumers` (a roger node under `root`), the CPU of its consumer
        # processes alone too: a figure far less noisy than the whole tree's.
        self.consumers = consumers
        self.consumer_marks: list[float] = []

    def mark(self, jobs: int) -> None:
        self.marks.append((time.monotonic(), jobs, cpu_seconds(list(tree(self.root))),
                           cpu_seconds(self.broker)))
        if self.consumers:
            self.consumer_marks.append(cpu_seconds(roger_consumers(self.root)))

    def between(self) -> dict[str, float]:
        """Per job CPU (µs) of the system and of the broker between the first and last mark,
        and how busy the machine's cores were with both (%)."""
        if len(self.marks) < 2 or self.marks[-1][1] <= self.marks[0][1]:
            return {}
        (t0, j0, s0, b0), (t1, j1, s1, b1) = self.marks[0], self.marks[-1]
        jobs, cores = j1 - j0, len(os.sched_getaffinity(0))
        out = {"cpu_sut": (s1 - s0) / jobs * 1e6, "cpu_broker": (b1 - b0) / jobs * 1e6,
               "busy": (s1 - s0 + b1 - b0) / ((t1 - t0) * cores) * 100}
        if len(self.consumer_marks) >= 2:
            out["cpu_consumer"] = (self.consumer_marks[-1] - self.consumer_marks[0]) / jobs * 1e6
        return out


def roger_consumers(runner: int) -> list[int]:
    """The consumer processes of the roger node that `runner` started (`Node.start()`).

    runner (0) > root supervisor (1) > partition supervisors and node services
    (2) > coordinators and consumers (3) > workers (4): consumers are the
    processes at depth 3 with children.
    """
    children, _ = _scan()
    depth = levels(runner)
    return [pid for pid, d in depth.items() if d == 3 and children.get(pid)]


def _kill(pids: dict[int, int], sig: int) -> None:
    for pid, start in pids.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


class ReadTimeout(BenchError):
    """The process said nothing in time (but is still running)."""


class Spawned:
    """A system under test running in a subprocess (its own session), with cleanup."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None,
                 stdin: bool = False, log: str | None = None) -> None:
        full_env = dict(os.environ)
        # Peers import `benchmarks.*` modules: the repository must be importable.
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])])
        full_env.update(env or {})
        self.argv = list(argv)
        self.log_path = log
        self._log: IO[Any] | None = open(log, "ab") if log else None  # noqa: SIM115
        self._buf = b""
        self.started = time.time()
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=full_env, start_new_session=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._log or subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def read_line(self, timeout: float) -> str:
        """One line of the process's stdout, waiting at most `timeout` seconds."""
        out = self.popen.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while not self._buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                raise ReadTimeout(f"{self.argv[0]} said nothing within {timeout:g} s")
            chunk = os.read(out.fileno(), 1)
            if not chunk:
                raise BenchError(f"{self.argv[0]} exited with {self.popen.wait(5)}{self._tail()}")
            self._buf += chunk
        line, self._buf = self._buf.decode(), b""
        return line

    def log_lines(self) -> list[str]:
        """What the process wrote to its log so far."""
        if not self.log_path:
            return []
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def _tail(self) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return "; log tail: " + f.read()[-600:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """End the process and every process it forked; returns within about grace + 10 s."""
        procs = tree(self.pid)
        try:
            if self.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    self.popen.stdin.close()  # the roger runner stops its node on EOF
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        finally:
            procs.update(tree(self.pid))  # forked since the first look
            _kill(procs, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                    (st := _stat(p)) is not None and st[1] == s for p, s in procs.items()):
                time.sleep(0.05)
            if self.popen.stdout is not None:
                self.popen.stdout.close()
            if self._log is not None:
                self._log.close()


def python(*args: str) -> list[str]:
    """argv running this interpreter (the venv's) with `args`."""
    return [sys.executable, *args]


def venv_script(name: str) -> str:
    """A console script installed next to this interpreter (celery, dramatiq)."""
    return os.path.join(os.path.dirname(sys.executable), name)
