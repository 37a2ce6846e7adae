"""Delay levels: where delayed jobs wait, in RabbitMQ, for any whole number of seconds.

One set per broker (vhost) and `system_exchange_prefix`, shared by every
partition, declared idempotently by the first producer that delays a job:

- level ``N`` (0..27) is a topic exchange and a quorum queue, both named
  ``<prefix>.delay.NN``. The queue holds every message for exactly ``2**N``
  seconds (``x-message-ttl``) and then dead-letters it, with its routing key
  unchanged, to the exchange of level ``N-1``; level 0 dead-letters to the
  topic exchange ``<prefix>.delay.deliver``;
- a message's routing key is the delay in binary, one word per bit from the
  highest set bit down to bit 0, then its destination queue:
  ``1.0.1.<partition>-<queue>`` waits 4 + 1 = 5 seconds. The exchange of
  level ``N`` routes on the word ``N+1`` places from the end: ``1`` into its
  queue (wait ``2**N`` s), ``0`` straight on to the next level's exchange;
- ``<prefix>.delay.deliver`` binds each main queue that ever got a delayed
  job with ``#.<partition>-<queue>`` (names have no dot, so the last word is
  the destination, unambiguously).

A producer publishes a job delayed ``s`` seconds to the exchange of the
highest set bit of ``s``: it visits at most 28 queues and waits exactly the
sum of their TTLs, so it never arrives early; each hop adds milliseconds.
Every queue of a level holds messages with one TTL, so the oldest is always
at the head and expires first: no head-of-line blocking, whatever the mix of
delays. 28 levels reach ``2**28 - 1`` seconds (8.5 years).

Why quorum queues: a classic queue dead-letters at most once (a message
expiring while the broker stops, or finding no route, is dropped); a quorum
queue with ``x-dead-letter-strategy: at-least-once`` (RabbitMQ >= 3.10,
which requires ``x-overflow: reject-publish``) keeps each expired message
until the next queue confirmed it, retrying while there is no route. So a
delayed job is never lost between levels; at worst it is delivered twice,
which at-least-once jobs already allow.
"""

from __future__ import annotations

from typing import Any

import amqp

from roger.amqp.connection import translate_errors
from roger.due import MAX_DELAY
from roger.settings import Settings

__all__ = ["LEVELS", "MAX_DELAY", "declare_destination", "declare_levels",
           "deliver_exchange_name", "level_name", "route"]

LEVELS = MAX_DELAY.bit_length()  # 28
MAX_ROUTING_KEY = 255  # bytes, AMQP's short string


def level_name(settings: Settings, level: int) -> str:
    """The exchange and the queue of `level` (both have this name)."""
    return f"{settings.system_exchange_prefix}.delay.{level:02d}"


def deliver_exchange_name(settings: Settings) -> str:
    """The last stop: routes each message to its destination queue."""
    return f"{settings.system_exchange_prefix}.delay.deliver"


def level_arguments(settings: Settings, level: int) -> dict[str, Any]:
    """A level queue's declaration arguments (see the module doc for why quorum)."""
    after = level_name(settings, level - 1) if level else deliver_exchange_name(settings)
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": (2 ** level) * 1000,
        "x-dead-letter-exchange": after,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _bit_pattern(level: int, bit: str) -> str:
    # The bit of `level` is the word level+1 places before the destination.
    return "#." + bit + ".*" * (level + 1)


def declare_levels(channel: amqp.Channel, settings: Settings) -> None:
    """Declare every level's exchange, queue and bindings, and the deliver exchange.

    Idempotent: the same arguments from every producer of every version.
    A queue that exists with other arguments raises `BrokerError`.
    """
    with translate_errors():
        deliver = deliver_exchange_name(settings)
        channel.exchange_declare(deliver, "topic", durable=True, auto_delete=False)
        for level in range(LEVELS):
            name = level_name(settings, level)
            channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
            channel.queue_declare(name, durable=True, exclusive=False, auto_delete=False,
                                  arguments=level_arguments(settings, level))
            channel.queue_bind(name, name, _bit_pattern(level, "1"))
            after = level_name(settings, level - 1) if level else deliver
            channel.exchange_bind(after, name, _bit_pattern(level, "0"))


def declare_destination(channel: amqp.Channel, settings: Settings, queue: str) -> None:
    """Bind main queue `queue` (``<partition>-<queue>``) to the deliver exchange."""
    with translate_errors():
        channel.queue_bind(queue, deliver_exchange_name(settings), f"#.{queue}")


def route(settings: Settings, seconds: int, queue: str) -> tuple[str, str]:
    """The exchange and routing key that deliver to `queue` after `seconds` (1..MAX_DELAY).

    Raises `ValueError` when the delay is out of range, or when the routing
    key would exceed AMQP's 255 bytes (a delay of years to a queue whose
    partition and queue names are both near their 100-character limits).
    """
    if not 1 <= seconds <= MAX_DELAY:
        raise ValueError(f"a delay must be 1 to {MAX_DELAY} seconds, got {seconds}")
    bits = format(seconds, "b")
    key = ".".join(bits) + "." + queue
    if len(key.encode()) > MAX_ROUTING_KEY:
        raise ValueError(f"a delay of {seconds} s to {queue!r} does not fit in a routing key: "
                         "use a shorter delay or shorter partition and queue names")
    return level_name(settings, len(bits) - 1), key


def level_queues(settings: Settings) -> list[str]:
    """Every level queue's name, level 0 first (for counts and clean-up)."""
    return [level_name(settings, level) for level in range(LEVELS)]
