"""Everything that talks AMQP on the producer side: names, topology, publishing.

- Queue names and the declarations of a queue's family (main, retry levels,
  buried, rejected): `declare_queues` is the one place queues are declared,
  so producers and consumers always declare them with identical arguments.
- `publish_confirmed`: publish a batch on a channel in publisher-confirm mode
  and wait for every ack in one round trip. The settle helpers of
  `roger.retry` and the producer both use it.
- `Broker`: the per-process producer connection (lazy, fork-aware,
  thread-safe, reconnecting once on a dropped connection).

kombu, py-amqp and socket exceptions never leave this module: they are
re-raised as `roger.BrokerError` (`translate_errors`).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (see the kombu imports below)
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import amqp
import kombu
import kombu.exceptions

# kombu imports these two (and the idna codec, for host names) on a process's
# first connection. Imported here, in the root before it forks, every
# consumer and coordinator shares them instead of holding a private copy:
# about 2.5 MiB less USS per process.
import kombu.transport.pyamqp  # noqa: F401
import kombu.utils.amq_manager  # noqa: F401
from amqp import exceptions as amqp_errors

from roger.amqp.frames import buffer_reads, drain_pending
from roger.errors import BrokerError
from roger.settings import Settings, check_partition_name, check_queue_name, redact_url

__all__ = [
    "Broker",
    "Outgoing",
    "QueueNotFound",
    "Unroutable",
    "buried_queue_name",
    "declare_queues",
    "get_broker",
    "publish_confirmed",
    "queue_arguments",
    "queue_name",
    "rejected_queue_name",
    "retry_queue_name",
    "translate_errors",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
PERSISTENT = 2
# While publishing a big batch, read pending acks every so many messages so
# the broker's confirms never pile up unread in the socket.
_DRAIN_EVERY = 256
# A connection idle longer than this is probed (a non-blocking read) before
# use, to notice that the broker or a middlebox dropped it meanwhile.
_PROBE_AFTER_IDLE = 1.0

T = TypeVar("T")

# Errors after which the connection is unusable: reconnect.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.ConnectionError,
    kombu.exceptions.OperationalError,
    OSError,  # includes socket.timeout and ConnectionResetError
    EOFError,
)


# ---------------------------------------------------------------- naming


def queue_name(partition: str, queue: str) -> str:
    """The main queue of `queue` in `partition`: ``<partition>-<queue>``."""
    return f"{check_partition_name(partition)}-{check_queue_name(queue)}"


def retry_queue_name(partition: str, queue: str, seconds: int) -> str:
    """The retry queue holding jobs for `seconds` before they return to the main queue."""
    return f"{queue_name(partition, queue)}.retry.{seconds}"


def buried_queue_name(partition: str, queue: str) -> str:
    """Where jobs go after their last retry (bounded by `max_buried`)."""
    return f"{queue_name(partition, queue)}.buried"


def rejected_queue_name(partition: str, queue: str) -> str:
    """Where messages that are not valid jobs go, untouched."""
    return f"{queue_name(partition, queue)}.rejected"


# -------------------------------------------------------------- topology


def queue_arguments(settings: Settings, partition: str, queue: str) -> dict[str, dict[str, Any]]:
    """Every queue of a (partition, queue) pair and its declaration arguments.

    The main queue comes first. Retry queues hold a message for their TTL,
    then dead-letter it through the default exchange back to the main
    queue. The side queues are classic: they are small, short-lived stops
    (retry) or bounded archives (buried, drop-head overflow; rejected).
    """
    main = queue_name(partition, queue)
    queues: dict[str, dict[str, Any]] = {main: {"x-queue-type": settings.queue_type}}
    for seconds in settings.retry_levels:
        queues[retry_queue_name(partition, queue, seconds)] = {
            "x-queue-type": "classic",
            "x-message-ttl": seconds * 1000,
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


# ------------------------------------------------------------ publishing


class Outgoing(NamedTuple):
    """One message to publish through the default exchange."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    content_type: str | None = CONTENT_TYPE


class Unroutable(BrokerError):
    """Some messages had no queue to go to (RabbitMQ returned them).

    `indices` are their positions in the published batch. Declare the
    queues and publish those messages again.
    """

    def __init__(self, indices: list[int], routing_keys: set[str]) -> None:
        self.indices = indices
        self.routing_keys = routing_keys
        super().__init__(f"no queue named {', '.join(sorted(routing_keys))}")


class QueueNotFound(BrokerError):
    """The queue named in an operation does not exist."""


class _Nacked(BrokerError):
    """RabbitMQ refused messages; the channel itself is still fine."""


class _ConfirmTimeout(BrokerError):
    """Confirms did not arrive in time: the connection is suspect."""


class _Batch:
    """The tags of one `publish_confirmed` call and what became of them."""

    __slots__ = ("first", "last", "nacked", "remaining")

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.remaining = last - first + 1
        self.nacked = 0


class _Confirms:
    """Publisher-confirm bookkeeping for one channel.

    RabbitMQ numbers the messages published on a confirm channel 1, 2, ...
    and acks (or nacks) them by that number, `multiple` meaning "and every
    lower one". Unroutable `mandatory` messages come back as basic.return
    before their ack. Batches may nest: a consumer callback dispatched while
    one batch waits can publish (and wait for) another on the same channel.
    """

    def __init__(self, channel: amqp.Channel) -> None:
        channel.confirm_select()
        # py-amqp clears this flag when it silently reopens ("revives") a
        # channel that RabbitMQ closed; the reopened channel is no longer in
        # confirm mode and numbers from 1 again, so this record is stale.
        channel._confirm_selected = True
        self.next_tag = 1
        self.pending: set[int] = set()
        self.batches: list[_Batch] = []
        self.returned: list[tuple[str, bytes]] = []
        channel.events["basic_ack"].add(self.on_ack)
        channel.events["basic_nack"].add(self.on_nack)
        channel.events["basic_return"].add(self.on_return)

    def detach(self, channel: amqp.Channel) -> None:
        channel.events["basic_ack"].discard(self.on_ack)
        channel.events["basic_nack"].discard(self.on_nack)
        channel.events["basic_return"].discard(self.on_return)

    def settle(self, tag: int, multiple: bool, nacked: bool) -> None:
        pending = self.pending
        if not multiple:
            if tag not in pending:
                return
            pending.discard(tag)
            done: Iterable[int] = (tag,)
        elif tag >= self.next_tag - 1:  # covers every tag handed out so far
            done, self.pending = pending, set()
        else:
            done = {t for t in pending if t <= tag}
            pending -= done
        batches = self.batches
        for t in done:
            for batch in batches:  # nearly always one
                if batch.first <= t <= batch.last:
                    batch.remaining -= 1
                    batch.nacked += nacked
                    break

    def on_ack(self, tag: int, multiple: bool) -> None:
        self.settle(tag, multiple, False)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self.settle(tag, multiple, True)

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        body = message.body
        self.returned.append((routing_key, body.encode() if isinstance(body, str) else body))


# Weak: a discarded channel takes its bookkeeping with it.
_confirms: weakref.WeakKeyDictionary[amqp.Channel, _Confirms] = weakref.WeakKeyDictionary()


def publish_confirmed(channel: amqp.Channel, items: Sequence[Outgoing], timeout: float) -> None:
    """Publish `items` persistently and wait until RabbitMQ confirmed them all.

    One round trip for the whole batch. The first call puts `channel` in
    confirm mode; publish on it only through this function from then on
    (it counts delivery tags). While waiting, other frames of the connection
    are dispatched as usual, so deliveries reach their consumer callbacks,
    and those may call this function again (on this channel too).

    Raises `Unroutable` when a queue is missing, `BrokerError` on a nack or
    when confirms take longer than `timeout` seconds (then nothing is known
    about the unconfirmed messages: discard the channel), and `BrokerError`
    for transport errors.
    """
    if not items:
        return
    with translate_errors():
        confirms = _confirms.get(channel)
        if confirms is None or not channel._confirm_selected:
            if confirms is not None:
                confirms.detach(channel)
            confirms = _confirms[channel] = _Confirms(channel)
        # py-amqp's basic_publish waits for each confirm when the connection
        # has confirm_publish set; _basic_publish never does.
        publish = channel._basic_publish
        connection = channel.connection
        if not confirms.batches:
            confirms.returned.clear()  # leftovers of a batch that timed out
        first = confirms.next_tag
        batch = _Batch(first, first + len(items) - 1)
        confirms.batches.append(batch)
        try:
            with _CoalescedWrites(connection.transport) as writes:
                _publish_all(publish, confirms, items, writes, connection)
            deadline = time.monotonic() + timeout
            while batch.remaining > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _ConfirmTimeout(
                        f"RabbitMQ did not confirm {batch.remaining} of {len(items)} "
                        f"message(s) within {timeout:g} s; they may or may not be queued"
                    )
                try:
                    connection.drain_events(timeout=remaining)
                except TimeoutError:
                    continue
        finally:
            confirms.batches.remove(batch)
    if batch.nacked:
        raise _Nacked(f"RabbitMQ refused (nacked) {batch.nacked} of {len(items)} messages")
    if confirms.returned:
        unroutable = _take_returned(items, confirms.returned)
        if unroutable.indices:
            raise unroutable


def _publish_all(publish: Callable[..., Any], confirms: _Confirms, items: Sequence[Outgoing],
                 writes: _CoalescedWrites, connection: amqp.Connection) -> None:
    tag = confirms.next_tag
    for count, item in enumerate(items, 1):
        message = amqp.Message(
            item.body,
            content_type=item.content_type,
            delivery_mode=PERSISTENT,
            message_id=item.message_id,
            application_headers=item.headers,
        )
        confirms.pending.add(tag)
        tag += 1
        confirms.next_tag = tag
        publish(message, exchange="", routing_key=item.routing_key, mandatory=True)
        if count % _DRAIN_EVERY == 0:
            # Send what we have and take in the confirms so far: the socket
            # buffers on both sides stay small.
            writes.flush()
            drain_pending(connection)


class _CoalescedWrites:
    """Collect py-amqp's socket writes and send them together.

    py-amqp writes each message with its own `sendall`; a batch of a
    thousand messages then costs a thousand syscalls where a few dozen do.
    Every write is whole frames, so joining them changes nothing on the wire.
    """

    LIMIT = 65536

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.size = 0

    def __enter__(self) -> _CoalescedWrites:
        self.send = self.transport._write
        self.transport._write = self._collect
        return self

    def _collect(self, data: bytes) -> None:
        # py-amqp hands over a view of a frame buffer it reuses for the next
        # message: keep a copy.
        self.parts.append(bytes(data))
        self.size += len(data)
        if self.size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            self.size = 0
            self.send(data)

    def __exit__(self, *exc: object) -> None:
        self.transport._write = self.send
        self.flush()


def _take_returned(items: Sequence[Outgoing], returned: list[tuple[str, bytes]]) -> Unroutable:
    # basic.return carries no delivery tag: match messages by key and body,
    # taking the matched returns out of the channel's list.
    wanted = Counter((item.routing_key, item.body) for item in items)
    matched: Counter[tuple[str, bytes]] = Counter()
    keep = []
    for entry in returned:
        if matched[entry] < wanted[entry]:
            matched[entry] += 1
        else:
            keep.append(entry)
    returned[:] = keep
    indices = []
    for index, item in enumerate(items):
        key = (item.routing_key, item.body)
        if matched[key] > 0:
            matched[key] -= 1
            indices.append(index)
    return Unroutable(indices, {item.routing_key for item in (items[i] for i in indices)})


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
    except _CONNECTION_ERRORS as exc:
        raise BrokerError(f"connection to RabbitMQ failed: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------ Broker


class Broker:
    """The producer's connection to RabbitMQ, one per process and URL.

    The connection opens on first use. After a `fork` the child opens its
    own (an AMQP socket must never be shared between processes). A lock
    serialises users: a py-amqp connection is not thread-safe. Queues are
    declared once per process and cached. An operation that fails because
    the connection dropped is retried once on a fresh connection.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float = 10.0,
        connect_timeout: float = 5.0,
        io_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        # Bounds every socket read/write without its own timeout (a queue
        # declaration, a basic_get): a silently dead peer must not hang us.
        self.io_timeout = io_timeout
        self._lock = threading.RLock()
        self._pid = os.getpid()
        # kombu parses the URL (failover, TLS, vhost) and connects; after
        # that only the py-amqp connection is used, since kombu's
        # `connection` property would silently reconnect (and sleep).
        self._conn: kombu.Connection | None = None
        self._amqp: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._last_used = 0.0
        self._declared: set[tuple[Any, ...]] = set()

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "not connected"
        return f"<Broker {redact_url(self.url)} {state}>"

    # -- public operations

    def publish(
        self,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any] | None = None,
        *,
        message_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Publish one persistent JSON message and wait for RabbitMQ's confirm."""
        self.publish_many([Outgoing(routing_key, body, headers, message_id)], timeout=timeout)

    def publish_many(self, items: Sequence[Outgoing], *, timeout: float = 10.0) -> None:
        """Publish a batch and wait for all its confirms in one round trip."""
        if items:
            self.call(lambda channel: publish_confirmed(channel, items, timeout))

    def declare(self, settings: Settings, partition: str, queue: str) -> None:
        """Declare a queue family once per process (see `declare_queues`)."""
        key = (
            partition,
            queue,
            settings.queue_type,
            tuple(settings.retry_levels),
            settings.max_buried,
        )
        if key in self._declared:
            return
        self.call(lambda channel: declare_queues(channel, settings, partition, queue,
                                                 retry=False))
        self._declared.add(key)

    def forget_declared(self) -> None:
        """Drop the declaration cache (after a queue turned out to be missing)."""
        self._declared.clear()

    def call(self, operation: Callable[[amqp.Channel], T]) -> T:
        """Run `operation(channel)` on the publishing channel, under the lock.

        Reconnects and retries once when the connection turns out dead;
        every failure surfaces as `BrokerError`.
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    with translate_errors():
                        channel = self._ready_channel()
                        return operation(channel)
                except (Unroutable, _Nacked):
                    raise  # the channel is fine; the caller decides
                except _ConfirmTimeout:
                    self._discard_connection()
                    raise  # not retried: the first attempt may have been queued
                except BrokerError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, amqp_errors.ChannelError):
                        self._discard_channel()  # RabbitMQ closed it; a retry won't help
                        raise
                    self._discard_connection()
                    if attempt == 2 or not isinstance(cause, _CONNECTION_ERRORS):
                        raise
                    log.info("RabbitMQ connection lost (%s); reconnecting once", exc)
                finally:
                    self._last_used = time.monotonic()
        raise AssertionError("unreachable")

    @contextmanager
    def channel(self) -> Iterator[amqp.Channel]:
        """A fresh channel for one-off work (listing, moving messages).

        Holds the lock while open. Closing it returns any un-acked
        `basic_get` messages to their queues.
        """
        with self._lock:
            channel = self._open_channel()
            try:
                with translate_errors():
                    yield channel
            except BrokerError as exc:
                if isinstance(exc.__cause__, _CONNECTION_ERRORS):
                    self._discard_connection()
                raise
            finally:
                self._last_used = time.monotonic()
                if channel.is_open:
                    try:
                        channel.close()
                    except Exception:  # the connection is failing: dropped next use
                        self._discard_connection()

    def _open_channel(self) -> amqp.Channel:
        # A connection the broker dropped (a restart, close_all_connections)
        # may only show when we write to it: open on a fresh one, once.
        for attempt in (1, 2):
            try:
                with translate_errors():
                    self._ready_channel()
                    assert self._amqp is not None
                    return self._amqp.channel()
            except BrokerError as exc:
                self._discard_connection()
                if attempt == 2 or not isinstance(exc.__cause__, _CONNECTION_ERRORS):
                    raise
                log.info("RabbitMQ connection lost (%s); reconnecting once", exc)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        with self._lock:
            conn, self._conn, self._amqp, self._channel = self._conn, None, None, None
            if conn is not None and self._pid == os.getpid():
                try:
                    conn.release()
                except Exception:
                    conn.collect()

    # -- connection management

    def _ready_channel(self) -> amqp.Channel:
        if self._pid != os.getpid():
            self._forget_inherited()
        if self._amqp is not None and time.monotonic() - self._last_used > _PROBE_AFTER_IDLE:
            try:
                drain_pending(self._amqp)
            except Exception as exc:
                log.info("RabbitMQ connection was dropped while idle (%s)", exc)
                self._discard_connection()
        if self._amqp is None:
            self._conn = self._connect()
            self._amqp = self._conn.connection
            # Confirms come back as one small frame per message: read them in
            # chunks rather than three recv calls each.
            buffer_reads(self._amqp.transport)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._amqp.channel()
        return self._channel

    def _connect(self) -> kombu.Connection:
        conn = kombu.Connection(
            self.url,
            heartbeat=self.heartbeat,
            connect_timeout=self.connect_timeout,
            transport_options={"read_timeout": self.io_timeout, "write_timeout": self.io_timeout},
        )
        try:
            # One attempt per failover URL, no sleeping in between.
            conn.ensure_connection(
                max_retries=max(len(conn.alt) - 1, 0),
                interval_start=0,
                interval_step=0.2,
                interval_max=0.5,
            )
        except Exception as exc:
            conn.collect()
            raise BrokerError(
                f"cannot connect to RabbitMQ at {redact_url(self.url)}: {exc}"
            ) from exc
        return conn

    def _discard_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except Exception:
                self._discard_connection()

    def _discard_connection(self) -> None:
        conn, self._conn, self._amqp, self._channel = self._conn, None, None, None
        if conn is not None:
            # No close handshake: the connection is broken or suspect.
            conn.collect()

    def _forget_inherited(self) -> None:
        # Forked: the connection belongs to the parent. Closing it (even a
        # socket shutdown) would cut the parent off, so only drop references;
        # garbage collection closes this process's copy of the descriptor.
        self._conn = self._amqp = self._channel = None
        self._lock = threading.RLock()
        self._pid = os.getpid()


_brokers: dict[tuple[str, float, float, float], Broker] = {}
_brokers_lock = threading.Lock()


def get_broker(settings: Settings) -> Broker:
    """This process's `Broker` for the settings' URL and connection options."""
    key = (
        settings.broker_url,
        settings.heartbeat,
        settings.connect_timeout,
        settings.confirm_timeout,
    )
    broker = _brokers.get(key)
    if broker is None:
        with _brokers_lock:
            broker = _brokers.get(key)
            if broker is None:
                broker = _brokers[key] = Broker(
                    settings.broker_url,
                    heartbeat=settings.heartbeat,
                    connect_timeout=settings.connect_timeout,
                    io_timeout=settings.confirm_timeout,
                )
    return broker


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time would never be released here.
    global _brokers_lock
    _brokers_lock = threading.Lock()
    for broker in _brokers.values():
        broker._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
