"""Connecting to RabbitMQ, and the errors that mean a connection is lost.

Every process opens its connections through `connect`: one place for the
URL (with failover across the URLs of a RabbitMQ cluster), heartbeat and
timeouts. kombu, py-amqp and socket exceptions leave this package as one
type, `roger.BrokerError` (`translate_errors`); `CONNECTION_ERRORS` are the
ones after which a connection is unusable.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (see the kombu imports below)
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import kombu
import kombu.exceptions

# kombu imports these two (and the idna codec, for host names) on a process's
# first connection. Imported here, in the root before it forks, every
# consumer and coordinator shares them instead of holding a private copy:
# about 2.5 MiB less USS per process.
import kombu.transport.pyamqp  # noqa: F401
import kombu.utils.amq_manager  # noqa: F401
from amqp import exceptions as amqp_errors

from roger.errors import BrokerError
from roger.settings import Settings, redact_url

__all__ = ["CONNECTION_ERRORS", "QueueNotFound", "connect", "rotated_urls", "translate_errors",
           "warm_up"]

# Errors after which the connection is unusable: reconnect (or exit and be restarted).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.ConnectionError,
    amqp_errors.RecoverableConnectionError,
    kombu.exceptions.OperationalError,
    OSError,  # includes socket.timeout and ConnectionResetError
    EOFError,
)

WARM_UP_TIMEOUT = 1.0  # seconds: a node must not start late for a broker that is down


class QueueNotFound(BrokerError):
    """The queue named in an operation does not exist."""


def rotated_urls(settings: Settings) -> list[str]:
    """The settings' broker URLs in the order this connection tries them.

    With a cluster's URLs, each connection starts at another node: the list
    is rotated by this process's pid plus a per-process count, so that a
    node's many processes (and one process's successive connections) spread
    over the cluster's nodes and one broker node's death touches only some
    of them. The rest of the list, in order, is the failover.
    """
    urls = settings.broker_urls
    if len(urls) < 2:
        return urls
    start = (os.getpid() + next(_turns)) % len(urls)
    return urls[start:] + urls[:start]


_turns = itertools.count()


def connect(settings: Settings, *, connect_timeout: float | None = None,
            io_timeout: float | None = None) -> kombu.Connection:
    """A connection with the settings' URL, heartbeat and connect timeout.

    One attempt per failover URL (starting at another cluster node for each
    connection: `rotated_urls`), no sleeping in between, each bounded by the
    connect timeout: a node that is down costs the next one at most that.
    `io_timeout` bounds every socket read and write that has no timeout of
    its own. Raises `BrokerError` naming the broker, password left out.
    """
    options = {"read_timeout": io_timeout, "write_timeout": io_timeout} if io_timeout else {}
    conn = kombu.Connection(";".join(rotated_urls(settings)), heartbeat=settings.heartbeat,
                            connect_timeout=connect_timeout or settings.connect_timeout,
                            transport_options=options)
    try:
        conn.ensure_connection(max_retries=max(len(conn.alt) - 1, 0), interval_start=0,
                               interval_step=0.2, interval_max=0.5)
    except Exception as exc:
        conn.collect()
        raise BrokerError(
            f"cannot connect to RabbitMQ at {redact_url(settings.broker_url)}: {exc}"
        ) from exc
    return conn


def warm_up(settings: Settings) -> None:
    """Open one connection and channel, then close them, before forking.

    The first run of a code path writes to the objects it touches (Python
    3.11 rewrites bytecode in place as it specialises it, and kombu and
    py-amqp fill caches), and in a forked child every such write copies a
    page. Run once in the root, those writes land in pages that every
    consumer and coordinator then shares: an idle partition of two queues
    measured 17.7 MiB USS with this, 19.3 without. Best effort: a broker
    that is down costs at most `WARM_UP_TIMEOUT` here, and the processes
    that need it report it.
    """
    try:
        conn = connect(settings, connect_timeout=min(settings.connect_timeout, WARM_UP_TIMEOUT))
    except BrokerError:
        return
    try:
        conn.channel().close()
    except Exception:
        pass
    finally:
        conn.release()


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise kombu, py-amqp and socket errors as `BrokerError`."""
    try:
        yield
    except BrokerError:
        raise
    except amqp_errors.PreconditionFailed as exc:
        raise BrokerError(f"RabbitMQ refused: {exc.reply_text or exc}") from exc
    except amqp_errors.NotFound as exc:
        raise QueueNotFound(f"not found: {exc.reply_text or exc}") from exc
    except (amqp_errors.AMQPError, amqp_errors.MessageNacked, kombu.exceptions.KombuError) as exc:
        raise BrokerError(f"{type(exc).__name__}: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise BrokerError(f"connection to RabbitMQ failed: {type(exc).__name__}: {exc}") from exc
