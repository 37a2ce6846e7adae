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

# The short form's order. The broker restart comes last: its recovery (the
# partitions wait with backoff while the broker is down) overlaps the drain.
FAULT_KINDS = (KILL_WORKER, KILL_CONSUMER, STOP_CONSUMER, KILL_PARTITION, RESTART_PARTITION,
               MEMORY_ALARM, CLOSE_CONNECTIONS, KILL_NODE, BROKER_RESTART)

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

    @classmethod
    def short(cls, workdir: Path | None = None, jobs: int = 300) -> ChaosConfig:
        """A few hundred jobs, one of each fault, about a minute and a half."""
        return cls(jobs=jobs, duration=40.0, seed=7, deterministic=True, gap=(1.0, 1.0),
                   drain_timeout=90.0, workdir=workdir)
