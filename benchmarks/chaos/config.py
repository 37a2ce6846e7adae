"""The ledger run's fault kinds and parameters (`ChaosConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BROKER_URL

# ----------------------------------------------------------------- fault kinds

KILL_WORKER = "kill_worker"
KILL_CONSUMER = "kill_consumer"
KILL_PARTITION = "kill_partition"
KILL_NODE = "kill_node"
CLOSE_CONNECTIONS = "close_connections"
BROKER_RESTART = "broker_restart"
MEMORY_ALARM = "memory_alarm"
STOP_CONSUMER = "stop_consumer"
RESTART_PARTITION = "restart_partition"
EXTERNAL = "external"  # a broker disruption this run did not cause (RabbitMQ is shared)
# On a 3-node cluster (``--cluster``, issue 17): faults of one broker node.
BROKER_KILL = "broker_kill"
BROKER_STOP_BUSIEST = "broker_stop_busiest"
LEADER_STOP = "leader_stop"
BROKER_FREEZE = "broker_freeze"
ROLLING_RESTART = "rolling_restart"

# The short form's order. The broker restart comes last: its recovery (the
# partitions wait with backoff while the broker is down) overlaps the drain.
FAULT_KINDS = (KILL_WORKER, KILL_CONSUMER, STOP_CONSUMER, KILL_PARTITION, RESTART_PARTITION,
               MEMORY_ALARM, CLOSE_CONNECTIONS, KILL_NODE, BROKER_RESTART)

# On the cluster: roger's own faults, the cluster-wide forms of the broker
# ones that a cluster survives whole (every node's connections closed, a
# memory alarm on every node), and the node faults. A whole-cluster
# stop_app is left out: quorum queues need a majority, and the rolling
# restart restarts every node anyway, one at a time.
CLUSTER_FAULT_KINDS = (KILL_WORKER, KILL_CONSUMER, STOP_CONSUMER, KILL_PARTITION,
                       RESTART_PARTITION, MEMORY_ALARM, CLOSE_CONNECTIONS, KILL_NODE,
                       BROKER_KILL, BROKER_STOP_BUSIEST, LEADER_STOP, BROKER_FREEZE,
                       ROLLING_RESTART)
# The short cluster form (CI): the broker node faults, each once, but the
# rolling restart: three node boots in turn (half of the test's time), which
# the full run (`--cluster`) and the tests' node kill and stop cover.
CLUSTER_SHORT_KINDS = (BROKER_KILL, BROKER_STOP_BUSIEST, LEADER_STOP, BROKER_FREEZE)
# The faults after which the longest pause in completions is measured.
BROKER_NODE_FAULTS = frozenset((*CLUSTER_SHORT_KINDS, ROLLING_RESTART))

DESCRIPTIONS = {
    KILL_WORKER: "SIGKILL a worker mid-job",
    KILL_CONSUMER: "SIGKILL a consumer",
    KILL_PARTITION: "SIGKILL a partition supervisor",
    KILL_NODE: "SIGKILL a whole node, start it again",
    CLOSE_CONNECTIONS: "rabbitmqctl close_all_connections",
    BROKER_RESTART: "rabbitmqctl stop_app, start_app",
    MEMORY_ALARM: "memory alarm (watermark 0, then 0.4) while publishing",
    STOP_CONSUMER: "SIGSTOP a consumer past 2 heartbeats, SIGCONT",
    RESTART_PARTITION: "restart_partition on the control socket",
    BROKER_KILL: "SIGKILL a broker node, boot it again after 10-30 s",
    BROKER_STOP_BUSIEST: "stop_app the broker node with the most roger connections, start_app",
    LEADER_STOP: "stop_app the node leading a quorum queue with a backlog, start_app",
    BROKER_FREEZE: "SIGSTOP a broker node past 3 heartbeats, SIGCONT",
    ROLLING_RESTART: "restart the 3 broker nodes one after the other (a rolling upgrade)",
}


# ---------------------------------------------------------------- configuration


@dataclass
class ChaosConfig:
    """One ledger run's parameters; `short()` is the test's form."""

    jobs: int = 10_000
    duration: float = 300.0  # seconds of faults; producers publish over the same window
    seed: int | None = None
    deterministic: bool = False  # each fault kind once, in FAULT_KINDS order, evenly spaced
    workers: int = 2  # per queue and node
    job_sleep: float = 0.3  # at most this many seconds of "work" per job (uniform)
    heartbeat: float = 2.0
    shutdown_timeout: float = 5.0
    confirm_timeout: float = 3.0
    retry_levels: tuple[int, ...] = (1, 2, 4, 8, 16)
    gap: tuple[float, float] = (3.0, 15.0)  # seconds between random faults
    hold: float = 20.0  # a victim job's wait for its worker to be killed
    stop_for: float | None = None  # SIGSTOP length; default 3 heartbeats + 1 s
    alarm_for: float = 5.0  # seconds the memory alarm lasts
    drain_timeout: float = 180.0
    idle_after: float = 0.0  # > 0: queues keep falling idle and waking (roger's idle_after)
    delayed_share: float = 0.2  # of the batches, enqueued with a delay of 1..max_delay s
    max_delay: int = 5
    workdir: Path | None = None
    broker_url: str = BROKER_URL
    connect_timeout: float = 5.0
    cluster: bool = False  # on a private 3-node RabbitMQ cluster (benchmarks.cluster)
    down_for: tuple[float, float] = (10.0, 30.0)  # a killed or stopped broker node's downtime

    @property
    def kinds(self) -> tuple[str, ...]:
        """The fault kinds of this run, in the short form's order."""
        if not self.cluster:
            return FAULT_KINDS
        return CLUSTER_SHORT_KINDS if self.deterministic else CLUSTER_FAULT_KINDS

    @classmethod
    def short(cls, workdir: Path | None = None, jobs: int = 300) -> ChaosConfig:
        """A few hundred jobs, one of each fault (3 s apart: each waits for a healthy
        system before it strikes), under a minute."""
        return cls(jobs=jobs, duration=27.0, seed=7, deterministic=True, gap=(1.0, 1.0),
                   drain_timeout=90.0, workdir=workdir)

    @classmethod
    def short_cluster(cls, workdir: Path | None = None, jobs: int = 300) -> ChaosConfig:
        """The short form on the cluster: each broker node fault once, nodes down briefly
        (3 s: longer than `connect_timeout`, so every connection fails over)."""
        return cls(jobs=jobs, duration=20.0, seed=7, deterministic=True, gap=(1.0, 1.0),
                   drain_timeout=90.0, workdir=workdir, cluster=True, connect_timeout=2.0,
                   down_for=(3.0, 3.0))
