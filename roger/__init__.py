"""roger: multi-tenant job processing on RabbitMQ.

The public API, grouped by topic. Everything else lives in submodules:
`roger.broker` (AMQP), `roger.message` (wire codec), `roger.retry`,
`roger.registry`, `roger.settings`, `roger.control` (a node's control
socket and its `Client`).
"""

from roger import control, info
from roger.admin import purge, retry_buried
from roger.config import configure
from roger.coordination import cancel, pause, resume
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
from roger.node import Node
from roger.producer import enqueue_many
from roger.settings import Settings

__all__ = [
    # jobs
    "Job",
    "enqueue_many",
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
