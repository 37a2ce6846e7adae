"""roger: multi-tenant job processing on RabbitMQ.

This module is the public API, grouped by topic. The package is built in
layers, lowest first; a module imports only from its own layer or lower
ones, and never in a cycle (`tests/roger/test_layers.py` checks both):

1. **base**: `roger.errors`, `roger.settings` (and `roger.urls`, broker
   URLs), `roger.config` (the process-wide default settings), `roger.record` (a job's data),
   `roger.registry`, `roger.message` (the JSON wire codec),
   `roger.callbacks`, `roger.control` (the control socket's protocol and
   its `Client`), `roger.metrics` (what consumers count for Prometheus),
   `roger.cron` (cron expressions and time zones).
2. **amqp**: `roger.amqp`, talking to RabbitMQ: connections, queue and
   exchange names and declarations, confirmed publishing, RPC, frame I/O
   and the one service loop the node's AMQP processes run on.
3. **partition**: `roger.partition`, a partition's processes: its
   supervisor, its coordinator and the coordinator's clients, the
   consumers, their worker pools and the workers.
4. **node**: `roger.node`, a node's own processes: the root supervisor
   (and `Node`, its handle), the control server, the system process, the
   metrics server.
5. **api**: `roger.job`, `roger.producer`, `roger.info`, `roger.admin`,
   `roger.testing` (jobs run inline or captured, no broker), its pytest
   fixtures `roger.pytest_plugin`, and this module.
6. **web**: `roger.web`, the status page: its HTTP server shows what
   `roger.info` gathers and acts through the API. The node starts its
   process by name (`roger.node.web`), never by import.
7. **cli**: `roger.cli` (with `python -m roger` and `python -m roger.supervisor`).

The file tree is the process tree: `roger/node/` holds the processes a node
runs once, `roger/partition/` those it runs per partition and per queue.
"""

from roger import control, info, testing
from roger.admin import purge, replay_rejected, retry_buried
from roger.config import configure
from roger.errors import (
    BadMessage,
    BrokerError,
    ControlError,
    DuplicateJob,
    JobTimeout,
    RogerError,
    UnknownJob,
    WorkerCrashed,
)
from roger.job import Job
from roger.node.node import Node
from roger.partition.coordination import cancel, pause, resume
from roger.producer import enqueue_many
from roger.settings import Settings

__all__ = [
    # jobs
    "Job",
    "enqueue_many",
    "testing",
    # running nodes
    "Node",
    "control",
    # configuration
    "Settings",
    "configure",
    # cluster-wide operations
    "cancel",
    "pause",
    "resume",
    # queues
    "info",
    "purge",
    "replay_rejected",
    "retry_buried",
    # errors
    "BadMessage",
    "BrokerError",
    "ControlError",
    "DuplicateJob",
    "JobTimeout",
    "RogerError",
    "UnknownJob",
    "WorkerCrashed",
]
