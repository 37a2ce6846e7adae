"""Every queue and exchange name roger uses, and their declarations.

- A queue's family: the main queue ``<partition>-<queue>``, its retry
  queues, ``.buried`` and ``.rejected``. `declare_queues` is the one place
  they are declared, so producers and consumers always declare them with
  identical arguments.
- A partition's coordination: the coordinator queue ``<partition>.global``,
  the events exchange ``<prefix>.<partition>.events`` and the waiting
  queues of execution keys.
- The cluster's system exchange ``<prefix>.system``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import amqp

from roger.amqp.connection import translate_errors
from roger.settings import Settings, check_partition_name, check_queue_name

# ------------------------------------------------------------- a queue family


def queue_name(partition: str, queue: str) -> str:
    """The main queue of `queue` in `partition`: ``<partition>-<queue>``."""
    return f"{check_partition_name(partition)}-{check_queue_name(queue)}"


def retry_queue_name(partition: str, queue: str, seconds: float) -> str:
    """The retry queue holding jobs for `seconds` before they return to the main queue.

    One per delay, shared by the levels that repeat it. `seconds` is spelled
    as its TTL is kept, to the millisecond: ``.retry.5`` (also for 5.0),
    ``.retry.1.5``, ``.retry.0.25``.
    """
    whole, ms = divmod(ttl_ms(seconds), 1000)
    spelled = f"{whole}.{ms:03d}".rstrip("0") if ms else str(whole)
    return f"{queue_name(partition, queue)}.retry.{spelled}"


def ttl_ms(seconds: float) -> int:
    """A delay in whole milliseconds, as RabbitMQ's ``x-message-ttl`` takes it."""
    return round(seconds * 1000)


def buried_queue_name(partition: str, queue: str) -> str:
    """Where jobs go after their last retry (bounded by `max_buried`)."""
    return f"{queue_name(partition, queue)}.buried"


def rejected_queue_name(partition: str, queue: str) -> str:
    """Where messages that are not valid jobs go, untouched."""
    return f"{queue_name(partition, queue)}.rejected"


def queue_arguments(settings: Settings, partition: str, queue: str) -> dict[str, dict[str, Any]]:
    """Every queue of a (partition, queue) pair and its declaration arguments.

    The main queue comes first. Retry queues hold a message for their TTL,
    then dead-letter it through the default exchange back to the main
    queue; levels that repeat a delay share its queue. The side queues are
    classic: they are small, short-lived stops (retry) or bounded archives
    (buried, drop-head overflow; rejected).
    """
    main = queue_name(partition, queue)
    queues: dict[str, dict[str, Any]] = {main: {"x-queue-type": settings.queue_type}}
    for seconds in settings.retry_levels:
        queues[retry_queue_name(partition, queue, seconds)] = {
            "x-queue-type": "classic",
            "x-message-ttl": ttl_ms(seconds),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": main,
        }
    queues[buried_queue_name(partition, queue)] = {
        "x-queue-type": "classic",
        "x-max-length": settings.max_buried,
        "x-overflow": "drop-head",
    }
    queues[rejected_queue_name(partition, queue)] = {"x-queue-type": "classic"}
    return queues


def declare_queues(channel: amqp.Channel, settings: Settings, partition: str, queue: str,
                   retry: bool = True) -> None:
    """Declare (idempotently) the main, retry, buried and rejected queues.

    All durable. A queue that already exists with other arguments (e.g. a
    classic queue when `queue_type` is quorum) raises `BrokerError` naming
    the difference; the channel is closed by RabbitMQ and must be discarded.
    With ``retry=False`` the retry queues are left out: producers and
    starting consumers skip them (a dozen declarations per queue, which add
    up over hundreds of partitions), and the first retry publish declares
    them when RabbitMQ returns it as unroutable.
    """
    with translate_errors():
        for name, arguments in queue_arguments(settings, partition, queue).items():
            if not retry and ".retry." in name:
                continue
            channel.queue_declare(
                queue=name, durable=True, exclusive=False, auto_delete=False, arguments=arguments
            )


# ------------------------------------------------------- a partition's coordination


def global_queue_name(partition: str) -> str:
    """The coordinator's request queue (single active consumer)."""
    return f"{partition}.global"


def events_exchange_name(settings: Settings, partition: str) -> str:
    """The fanout on which the coordinator broadcasts cancel, pause and resume."""
    return f"{settings.system_exchange_prefix}.{partition}.events"


WAITING_HEADER = "x-roger-queue"  # on a parked job: the queue it returns to
# On a copy of a job that may have a twin (same id) elsewhere: it takes its
# twin lock before it runs (see roger.partition.twin_locks).
TWIN_HEADER = "x-roger-twin"


def waiting_queue_name(partition: str, key: str) -> str:
    """Where jobs wait, FIFO, for their execution key."""
    return f"{partition}-execution-waiting-{key}"


def declare_global(channel: amqp.Channel, settings: Settings, partition: str) -> None:
    """The coordinator queue and the events exchange (idempotent, same arguments everywhere)."""
    channel.queue_declare(global_queue_name(partition), durable=True, auto_delete=False,
                          arguments={"x-single-active-consumer": True})
    channel.exchange_declare(events_exchange_name(settings, partition), "fanout",
                             durable=True, auto_delete=False)


def links_queue_name(partition: str) -> str:
    return f"{partition}.links"


LINKS_EXPIRE_MS = 3_600_000  # an hour without a consumer: no process of the partition is up


def declare_links(channel: amqp.Channel, partition: str) -> int:
    """The partition's roll-call queue; returns how many consumers it has.

    Every consumer process of the partition consumes it (and nothing is
    ever published to it), so its consumer count is how many are up
    (see roger.partition.twin_locks). Transient, and deleted by RabbitMQ
    once unused for an hour.
    """
    return channel.queue_declare(links_queue_name(partition), durable=False, auto_delete=False,
                                 arguments={"x-expires": LINKS_EXPIRE_MS}).consumer_count


def declare_waiting(channel: amqp.Channel, partition: str, key: str) -> str:
    name = waiting_queue_name(partition, key)
    channel.queue_declare(name, durable=True, auto_delete=False)
    return name


# ----------------------------------------------------------------- the cluster


def system_exchange_name(settings: Settings) -> str:
    return f"{settings.system_exchange_prefix}.system"


def declare_system(channel: amqp.Channel, settings: Settings) -> str:
    name = system_exchange_name(settings)
    channel.exchange_declare(name, "fanout", durable=True, auto_delete=False)
    return name


# --------------------------------------------------------------- queue depths

COUNT_WINDOW = 256  # passive declarations in flight at once


def count_messages(open_channel: Callable[[], amqp.Channel], names: Iterable[str]
                   ) -> dict[str, tuple[int, int] | None]:
    """``{name: (message_count, consumer_count)}`` of existing queues; None for a missing one.

    Passive declarations, sent in windows of `COUNT_WINDOW` before their
    answers are read: a node's status counts thousands of idle queues, and
    one round trip each added up to most of a second on a thousand
    partitions. A missing queue makes RabbitMQ close the channel, and the
    declarations sent after it on that channel go unanswered: counting goes
    on from the next name on a fresh channel from `open_channel()`.
    """
    todo = list(names)
    out: dict[str, tuple[int, int] | None] = {}
    channel = open_channel()
    while todo:
        window, todo = todo[:COUNT_WINDOW], todo[COUNT_WINDOW:]
        for name in window:
            channel.send_method(amqp.spec.Queue.Declare, "BsbbbbbF",
                                (0, name, True, False, False, False, False, None))
        for i, name in enumerate(window):
            try:
                _, messages, consumers = channel.wait(amqp.spec.Queue.DeclareOk,
                                                      returns_tuple=True)
            except amqp.exceptions.NotFound:
                out[name] = None
                todo = window[i + 1:] + todo
                channel = open_channel()
                break
            out[name] = (messages, consumers)
    return out
