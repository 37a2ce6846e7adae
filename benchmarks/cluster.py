"""A private three-node RabbitMQ cluster on this machine (issue 17): `RabbitCluster`.

Each node is an `IsolatedRabbit` (own node name ``roger-cl<pid>-<i>@localhost``,
own AMQP, distribution and CLI ports far from the shared node's 5672 / 25672,
own data and log directories), all three sharing one Erlang cookie. Nodes 2
and 3 join node 1 with ``rabbitmqctl join_cluster``. The shared broker is never
touched: every ``rabbitmqctl`` here names one of our nodes (``-n``) and runs
with that node's environment (its ``HOME``, hence its cookie).

The faults the tests and the ledger run need are methods: `kill` (SIGKILL the
node's whole process group), `restart` (boot it again on its data directory:
it rejoins the cluster by itself), `stop_app` / `start_app`, `freeze` /
`thaw` (SIGSTOP / SIGCONT). `stop()` ends everything (also from `atexit` and
on SIGTERM through `cluster()`), thawing first, and deletes the directories.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

from benchmarks.common import BenchError
from benchmarks.isolated import IsolatedRabbit

BASE_PORT = 5790  # node i: AMQP BASE_PORT + 20 i, distribution + 20000, CLI + 30000
PORT_STEP = 20


class RabbitCluster:
    """`size` RabbitMQ nodes joined into one cluster: `start()`, always `stop()`."""

    def __init__(self, size: int = 3, base_port: int = BASE_PORT) -> None:
        cookie = os.urandom(16).hex().upper()
        tag = f"roger-cl{os.getpid()}"
        self.nodes = [IsolatedRabbit(base_port + PORT_STEP * i, fd_limit=4096,
                                     node=f"{tag}-{i + 1}@localhost", cookie=cookie)
                      for i in range(size)]
        self.frozen: set[int] = set()
        self._atexit = False

    # ------------------------------------------------------------ addresses

    @property
    def urls(self) -> list[str]:
        """One AMQP URL per node, in node order."""
        return [node.url for node in self.nodes]

    @property
    def broker_url(self) -> str:
        """The URLs joined by ';', as roger's `broker_url` takes them."""
        return ";".join(self.urls)

    def index(self, name: str) -> int:
        """The index of the node named `name` (``rabbit@...`` form)."""
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        raise KeyError(name)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> RabbitCluster:
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        self._boot(range(len(self.nodes)))
        first = self.nodes[0].name
        assert first is not None
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first)
            node.ctl("start_app")
        for node in self.nodes:
            node.ctl("await_startup", "--timeout", "60", timeout=90)
        running = self.running_nodes()
        if len(running) != len(self.nodes):
            raise BenchError(f"the cluster formed with {len(running)} nodes: {running}")
        return self

    def _boot(self, which: range | list[int]) -> None:
        """Start the nodes `which` in parallel (each boot takes seconds)."""
        errors: list[BaseException] = []

        def boot(i: int) -> None:
            try:
                self.nodes[i].start()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(i,)) for i in which]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop every node (thawed first) and delete its files."""
        for i in list(self.frozen):
            self.thaw(i)
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- faults

    def kill(self, i: int) -> None:
        """SIGKILL node `i`'s whole process group (the Erlang VM and its helpers)."""
        node = self.nodes[i]
        proc, node.proc = node.proc, None
        self.frozen.discard(i)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def restart(self, i: int) -> None:
        """Boot node `i` again on its own data directory; it rejoins the cluster."""
        self.nodes[i].start()

    def restart_gracefully(self, i: int) -> float:
        """``rabbitmqctl stop`` node `i`, then boot it again; returns the seconds it took."""
        started = time.monotonic()
        node = self.nodes[i]
        node.ctl("stop", timeout=120)
        proc, node.proc = node.proc, None
        if proc is not None:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        node.start()
        self.wait_running()
        return time.monotonic() - started

    def await_quorum_safe(self, i: int, timeout: float = 120.0) -> bool:
        """Until stopping node `i` leaves every quorum queue a majority (what a rolling
        upgrade checks between nodes); False if that did not happen within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.nodes[i].run("rabbitmq-queues", "check_if_node_is_quorum_critical",
                                     timeout=60, check=False)
            if done.returncode == 0:
                return True
            time.sleep(1.0)
        return False

    def alive(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def stop_app(self, i: int) -> None:
        """``rabbitmqctl stop_app``: the node closes its connections and leaves service."""
        self.nodes[i].ctl("stop_app", timeout=120)

    def start_app(self, i: int) -> None:
        self.nodes[i].ctl("start_app", timeout=120)
        self.nodes[i].ctl("await_startup", "--timeout", "60", timeout=90)

    def freeze(self, i: int) -> None:
        """SIGSTOP node `i`: its sockets stay open, it answers nothing."""
        proc = self.nodes[i].proc
        if proc is not None:
            self.frozen.add(i)
            os.killpg(proc.pid, signal.SIGSTOP)

    def thaw(self, i: int) -> None:
        proc = self.nodes[i].proc
        self.frozen.discard(i)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)

    # ----------------------------------------------------------- inspection

    def any_node(self) -> IsolatedRabbit:
        """A node that answers (for cluster-wide questions)."""
        for i, node in enumerate(self.nodes):
            if self.alive(i) and i not in self.frozen:
                done = node.run("rabbitmqctl", "status", "-q", timeout=30, check=False)
                if done.returncode == 0:
                    return node
        raise BenchError("no node of the cluster answers")

    def running_nodes(self) -> list[str]:
        out = self.any_node().ctl("eval", "rabbit_nodes:all_running().")
        return [name.strip(" '[]\n") for name in out.split(",") if "@" in name]

    def leaders(self, marker: str = "") -> dict[str, str]:
        """Quorum queue name -> the node name of its leader (queues whose name has `marker`)."""
        out = self.any_node().ctl("list_queues", "-q", "--no-table-headers", "name", "type",
                                  "leader", timeout=120)
        found = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].strip() == "quorum" and marker in parts[0]:
                found[parts[0].strip()] = parts[2].strip()
        return found

    def queue_stats(self, marker: str = "") -> dict[str, tuple[int, str]]:
        """Queue name -> (messages, leader node) for the queues whose name has `marker`."""
        out = self.any_node().ctl("list_queues", "-q", "--no-table-headers", "name",
                                  "messages", "leader", timeout=120)
        found = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) == 3 and marker in parts[0] and parts[1].isdigit():
                found[parts[0]] = (int(parts[1]), parts[2])
        return found

    def members(self, queue: str) -> list[str]:
        """The nodes holding a replica of quorum queue `queue`."""
        out = self.any_node().ctl("list_queues", "-q", "--no-table-headers", "name",
                                  "members", timeout=120)
        for line in out.splitlines():
            name, _, members = line.partition("\t")
            if name.strip() == queue:
                return [m.strip(" '[]\"") for m in members.split(",") if "@" in m]
        raise KeyError(queue)

    def connections(self) -> Counter[int]:
        """Client connections per node index (nodes that do not answer count 0)."""
        counts: Counter[int] = Counter()
        for i, node in enumerate(self.nodes):
            if not self.alive(i) or i in self.frozen:
                continue
            done = node.run("rabbitmqctl", "list_connections", "-q", "--no-table-headers",
                            "peer_port", timeout=60, check=False)
            if done.returncode == 0:
                counts[i] = sum(1 for x in done.stdout.split() if x.isdigit())
        return counts

    def transfer_leader(self, queue: str, to: int) -> None:
        """Move quorum queue `queue`'s leader to node `to` (Raft leadership transfer)."""
        target = self.nodes[to].name
        self.any_node().ctl("eval", f'rabbit_quorum_queue:transfer_leadership('
                            f'element(2, rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, '
                            f'<<"{queue}">>))), \'{target}\').')

    def wait_running(self, timeout: float = 120.0) -> None:
        """Until every node runs (after a restart or start_app)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(BenchError):
                if len(self.running_nodes()) == len(self.nodes):
                    return
            time.sleep(1.0)
        raise BenchError(f"the cluster did not have all {len(self.nodes)} nodes running "
                         f"within {timeout:g} s")


@contextlib.contextmanager
def cluster(size: int = 3, base_port: int = BASE_PORT) -> Iterator[RabbitCluster]:
    """A started `RabbitCluster`, stopped and deleted on exit (on SIGTERM too)."""
    nodes = RabbitCluster(size, base_port)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(143)

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
