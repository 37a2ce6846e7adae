"""`Broker`: a producer process's connection to RabbitMQ (lazy, fork-aware, thread-safe).

One per process and URL (`get_broker`). It publishes with confirms, declares
queue families once per process, and reconnects once when the connection
turns out to have dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import amqp
import kombu
from amqp import exceptions as amqp_errors

from roger.amqp import delay
from roger.amqp.connection import CONNECTION_ERRORS, QueueNotFound, connect, translate_errors
from roger.amqp.frames import buffer_reads, drain_pending
from roger.amqp.publish import ConfirmTimeout, Nacked, Outgoing, Unroutable, publish_confirmed
from roger.amqp.topology import declare_queues
from roger.errors import BrokerError
from roger.settings import Settings

__all__ = ["Broker", "get_broker"]

log = logging.getLogger(__name__)

# A connection idle longer than this is probed (a non-blocking read) before
# use, to notice that the broker or a middlebox dropped it meanwhile.
_PROBE_AFTER_IDLE = 1.0

T = TypeVar("T")


class Broker:
    """The producer's connection to RabbitMQ, one per process and URL.

    The connection opens on first use. After a `fork` the child opens its
    own (an AMQP socket must never be shared between processes). A lock
    serialises users: a py-amqp connection is not thread-safe. Queues are
    declared once per process and cached. An operation that fails because
    the connection dropped is retried once on a fresh connection.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Bounds every socket read/write without its own timeout (a queue
        # declaration, a basic_get): a silently dead peer must not hang us.
        self.io_timeout = settings.confirm_timeout
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
        return f"<Broker {self.settings.safe_broker_url} {state}>"

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

    def declare_delayed(self, settings: Settings, queue: str) -> None:
        """Declare the delay levels and bind main queue `queue` to them, once per process."""
        prefix = settings.system_exchange_prefix
        self.declare_once(("delay", prefix), lambda ch: delay.declare_levels(ch, settings))
        try:
            self.declare_once(("delay", prefix, queue),
                              lambda ch: delay.declare_destination(ch, settings, queue))
        except QueueNotFound:
            # The levels were deleted since this process declared them (an
            # operator's clean-up): declare them again, once.
            self._declared.discard(("delay", prefix))
            self.declare_once(("delay", prefix), lambda ch: delay.declare_levels(ch, settings))
            self.declare_once(("delay", prefix, queue),
                              lambda ch: delay.declare_destination(ch, settings, queue))

    def declare_once(self, key: tuple[Any, ...], operation: Callable[[amqp.Channel], Any]
                     ) -> None:
        """Run the declaring `operation` unless one with `key` ran since the last forget."""
        if key not in self._declared:
            self.call(operation)
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
                except Unroutable:
                    raise  # the channel is fine; the caller decides
                except Nacked:
                    # A fresh channel for the next try: after a quorum queue's
                    # leader died, a channel that knew the old one has every
                    # publish to that queue nacked, for as long as it lives.
                    self._discard_channel()
                    raise
                except ConfirmTimeout:
                    self._discard_connection()
                    raise  # not retried: the first attempt may have been queued
                except BrokerError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, amqp_errors.ChannelError):
                        self._discard_channel()  # RabbitMQ closed it; a retry won't help
                        raise
                    self._discard_connection()
                    if attempt == 2 or not isinstance(cause, CONNECTION_ERRORS):
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
                if isinstance(exc.__cause__, CONNECTION_ERRORS):
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
                if attempt == 2 or not isinstance(exc.__cause__, CONNECTION_ERRORS):
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
            self._conn = connect(self.settings, io_timeout=self.io_timeout)
            self._amqp = self._conn.connection
            # Confirms come back as one small frame per message: read them in
            # chunks rather than three recv calls each.
            buffer_reads(self._amqp.transport)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._amqp.channel()
        return self._channel

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
                broker = _brokers[key] = Broker(settings)
    return broker


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time would never be released here.
    global _brokers_lock
    _brokers_lock = threading.Lock()
    for broker in _brokers.values():
        broker._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
