"""roger: multi-tenant job processing on RabbitMQ.

The public API, grouped by topic. Everything else lives in submodules:
`roger.broker` (AMQP), `roger.message` (wire codec), `roger.retry`,
`roger.registry`, `roger.settings`.
"""

from roger import info
from roger.admin import purge, retry_buried
from roger.config import configure
from roger.coordination import cancel, pause, resume
from roger.errors import (
    BadMessage,
    BrokerError,
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
    "DuplicateJob",
    "JobTimeout",
    "RogerError",
    "UnknownJob",
    "WorkerCrashed",
]
