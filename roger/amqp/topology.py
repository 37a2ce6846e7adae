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


def replicated(settings: Settings, **arguments: Any) -> dict[str, Any]:
    """Declaration arguments of a queue of the settings' `queue_type`.

    Quorum: ``x-queue-type`` quorum (replicated by Raft across the
    cluster's nodes) and, when set, ``x-quorum-initial-group-size``.
    Classic: ``x-queue-type`` classic, the arguments as given.
    """
    if settings.queue_type != "quorum":
        return {"x-queue-type": "classic", **arguments}
    return _quorum(settings, **arguments)


def _quorum(settings: Settings, **arguments: Any) -> dict[str, Any]:
    size = settings.quorum_initial_group_size
    return {"x-queue-type": "quorum", **({"x-quorum-initial-group-size": size} if size else {}),
            **arguments}


def side(settings: Settings, **arguments: Any) -> dict[str, Any]:
    """Declaration arguments of a side queue (retry, buried, rejected): `side_queue_type`.

    Classic by default: a burst of quorum queues (three more per queue) made
    a broker with the usual descriptor limit (1,024) stop answering for
    minutes on this machine (350 quorum queues declared in 3 s: no AMQP
    handshake answered 3 s later; 700 across partitions: hung until killed),
    while the same classic queues cost it nothing visible. On a cluster,
    set it to quorum: a classic queue whose node is down cannot be declared.
    """
    if settings.side_queue_type == "quorum":
        return _quorum(settings, **arguments)
    return {"x-queue-type": "classic", **arguments}


def queue_arguments(settings: Settings, partition: str, queue: str) -> dict[str, dict[str, Any]]:
    """Every queue of a (partition, queue) pair and its declaration arguments.

    The main queue comes first. Retry queues hold a message for their TTL,
    then dead-letter it through the default exchange back to the main
    queue; levels that repeat a delay share its queue. ``.buried`` keeps the
    newest `max_buried` (drop-head overflow), ``.rejected`` everything.

    The main queue is of `queue_type`, the side queues of `side_queue_type`
    (see `side`): on a RabbitMQ cluster a classic queue lives on one node,
    and while that node is down the queue cannot even be declared, so a
    consumer (which declares its side queues) could not start. Quorum queues
    (RabbitMQ 3.10+) take message TTL, dead-lettering and drop-head
    overflow; a quorum retry queue dead-letters
    *at least once* (it keeps a message until the main queue confirms it,
    which needs ``reject-publish`` overflow; the queue has no length limit).
    """
    main = queue_name(partition, queue)
    queues: dict[str, dict[str, Any]] = {main: replicated(settings)}
    for seconds in settings.retry_levels:
        retry: dict[str, Any] = {
            "x-message-ttl": ttl_ms(seconds),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": main,
        }
        if settings.side_queue_type == "quorum":
            retry |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        queues[retry_queue_name(partition, queue, seconds)] = side(settings, **retry)
    queues[buried_queue_name(partition, queue)] = side(
        settings, **{"x-max-length": settings.max_buried, "x-overflow": "drop-head"})
    queues[rejected_queue_name(partition, queue)] = side(settings)
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
    """The coordinator queue and the events exchange (idempotent, same arguments everywhere).

    Of the settings' `queue_type`: a quorum queue's single active consumer
    moves with its leader when a broker node dies.
    """
    channel.queue_declare(global_queue_name(partition), durable=True, auto_delete=False,
                          arguments=replicated(settings, **{"x-single-active-consumer": True}))
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


def declare_waiting(channel: amqp.Channel, settings: Settings, partition: str, key: str) -> str:
    """The waiting queue of execution key `key`, of the settings' `queue_type`."""
    name = waiting_queue_name(partition, key)
    channel.queue_declare(name, durable=True, auto_delete=False, arguments=replicated(settings))
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
