"""The one loop of a node's AMQP processes: the consumer, the coordinator, the system process.

A `Service` owns one connection and waits in one epoll set on its AMQP
socket, the link to its supervisor, a signal wakeup (SIGTERM, SIGINT) and
whatever the subclass adds (a consumer's worker pipes). Each turn it:

1. reads what the socket holds and dispatches every whole frame in it
   (one read per wakeup: see `roger.amqp.frames`), then runs the work that
   AMQP callbacks queued (`later`), one item at a time;
2. answers its supervisor's calls (`handle_call`) and casts (`handle_cast`);
3. hands a signal, or a supervisor that went away, to `on_stop()`;
4. runs `on_turn(ready)`, the subclass's own work;
5. sends a heartbeat when one is due (every `heartbeat / 4` seconds).

It sleeps until something is readable, the subclass's `timeout()` or the
next heartbeat, whichever comes first: an idle service costs no CPU.

Broker trouble ends the process with an `ExitCode` that its supervisor's
log shows; the supervisor starts it again. A service with ``reconnect =
True`` (the system process, which must never bring its node down) instead
reconnects in the same process with a capped backoff.
"""

from __future__ import annotations

import enum
import logging
import os
import selectors
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from amqp.exceptions import ConsumerCancelled

import supervision
from roger.amqp.connection import CONNECTION_ERRORS, connect
from roger.amqp.frames import READ_SIZE, buffer_reads, has_frame
from roger.errors import BrokerError
from roger.settings import Settings
from supervision.signals import Wakeup

__all__ = ["BROKER_ERRORS", "ExitCode", "Service", "heartbeat_tick"]

log = logging.getLogger(__name__)

# Everything that means "the broker is unreachable or the connection is gone".
BROKER_ERRORS: tuple[type[BaseException], ...] = (BrokerError, *CONNECTION_ERRORS)
IDLE_TICK = 5.0  # seconds between turns when heartbeats are off and nothing else is due
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # reconnect delays of a service with reconnect=True


class ExitCode(enum.IntEnum):
    """Why a service process exited, as its supervisor reports it (``exit code N``)."""

    NO_BROKER = 3  # could not connect, or declare what it needs, at start
    CONNECTION_LOST = 4  # the connection dropped while serving


def heartbeat_tick(settings: Settings) -> float:
    """How often a service checks its heartbeat: four times per heartbeat interval."""
    return settings.heartbeat / 4 if settings.heartbeat else IDLE_TICK


class Service:
    """Base of a process that serves one AMQP connection; subclasses fill in the hooks.

    >>> class Echo(Service):
    ...     def setup(self):
    ...         self.channel = self.conn.channel()
    >>> Echo(settings, "echo").run()  # doctest: +SKIP
    """

    notify_ready: ClassVar[bool] = True  # tell the supervisor once set up
    reconnect: ClassVar[bool] = False  # reconnect in-process instead of exiting

    def __init__(self, settings: Settings, label: str) -> None:
        self.settings = settings
        self.label = label  # in every log line: "<partition>/<queue>", "<partition>", "system"
        self.stopping = False
        self.broken = False  # the connection failed: close it without a handshake
        # Set when the process runs (`run`), and again on each reconnect.
        self.conn: Any = None  # the kombu Connection
        self.amqp: Any  # its py-amqp connection
        self.sock: Any
        self.transport: Any
        self.wakeup: Wakeup
        self.parent: supervision.Link | None = None
        self.tick = heartbeat_tick(settings)
        self._selector = selectors.DefaultSelector()
        self._watching: Any = None  # what the epoll set was built for
        self.inbox: deque[tuple[Callable[..., None], tuple]] = deque()

    # ------------------------------------------------------------ the hooks

    def setup(self) -> None:
        """Declare and subscribe on `self.conn` (before the supervisor hears "ready")."""

    def later(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap an AMQP callback so that it only queues its work for the loop.

        py-amqp runs callbacks inside the frame dispatch, and our work itself
        waits on the connection (confirms, declarations, basic_get): done
        right there it would nest one wait in another, and the inner one can
        take the outer one's reply (or run another callback in the middle of
        this one). The loop runs the queued work after the frames are
        dispatched, one item at a time.
        """
        return lambda *args: self.inbox.append((fn, args))

    def run_inbox(self) -> None:
        """Run the work AMQP callbacks queued, in order (see `later`)."""
        while self.inbox:
            fn, args = self.inbox.popleft()
            fn(*args)

    def on_frames(self) -> None:
        """Runs every turn, after the frames read were dispatched: by default, the inbox."""
        self.run_inbox()

    def on_turn(self, ready: set[Any]) -> None:
        """The subclass's work of one turn; `ready` are the readable objects."""

    def timeout(self) -> float:
        """Seconds until the subclass needs a turn even if nothing is readable."""
        return self.tick

    def watch_key(self) -> Any:
        """Changes whenever `watched()` would return something else."""
        return None

    def watched(self) -> list[Any]:
        """Objects to wait on besides the socket, the link and the signal wakeup."""
        return []

    def handle_call(self, payload: Any) -> Any:
        """Answer a call from the supervisor."""
        raise ValueError(f"{self.label}: unknown request {payload!r}")

    def handle_cast(self, payload: Any) -> None:
        """Act on a cast from the supervisor."""

    def on_stop(self) -> None:
        """SIGTERM, SIGINT, or the supervisor went away: by default, stop now."""
        self.stopping = True

    def finished(self) -> bool:
        """True once the loop should end."""
        return self.stopping

    def on_consumer_cancelled(self) -> None:
        """RabbitMQ cancelled one of our subscriptions (its queue was deleted)."""
        raise ConsumerCancelled(f"{self.label}: the broker cancelled a subscription")

    def close(self) -> None:
        """Release what `setup` made; runs however the service ends.

        After a broker error the socket is just closed: a graceful close
        waits for RabbitMQ's close-ok, which a frozen or unreachable broker
        node (the heartbeat said so) never sends, and the process would hang
        there instead of reconnecting to another node.
        """
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                if self.broken:
                    conn.collect()
                else:
                    conn.release()
            except Exception:  # the connection is gone already
                pass

    # --------------------------------------------------------------- running

    def run(self) -> None:
        """Process main: connect, set up, serve; exits with an `ExitCode` on broker trouble."""
        self.wakeup = Wakeup()
        self.parent = supervision.parent() if supervision.is_supervised() else None
        delay = BACKOFF_FIRST
        ready = not self.notify_ready
        while True:
            code = ExitCode.NO_BROKER
            try:
                self._connect()
                self.setup()
                if not ready:
                    supervision.ready()
                    ready = True
                code = ExitCode.CONNECTION_LOST
                self._loop()
                return
            except BROKER_ERRORS as e:
                self.stopping = self.broken = True
                if not self.reconnect:
                    log.error("[%s] %s: %s", self.label, _what(code), e)
                    raise SystemExit(code) from None
                log.warning("[%s] %s: %s; retrying in %.1f s", self.label, _what(code), e, delay)
                if not ready:  # its supervisor must not wait for the broker to come back
                    supervision.ready()
                    ready = True
            finally:
                self.close()
            if self._wait_for_signal(delay):
                return
            self.stopping = self.broken = False
            delay = min(delay * 2, BACKOFF_MAX)

    def _connect(self) -> None:
        self.conn = connect(self.settings)
        self.amqp = self.conn.connection
        self.sock = self.amqp.sock
        self.transport = self.amqp.transport
        buffer_reads(self.transport)
        self._watching = None

    def _wait_for_signal(self, seconds: float) -> bool:
        """Sleep `seconds` unless a stop signal comes first (then True)."""
        ready = self._selector_for([self.wakeup.reader]).select(seconds)
        self._watching = None
        return bool(ready) and bool(self.wakeup.read())

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self.finished():
            # Frames may wait in py-amqp's buffer (read while waiting for a
            # confirm, say), where epoll cannot see them.
            buffered = has_frame(self.transport)
            # Work queued by callbacks that ran while we waited on the broker
            # (inside a call from the supervisor, say) must not wait for the
            # next frame to arrive.
            timeout = 0.0 if buffered or self.inbox else max(
                0.0, min(self.timeout(), last_beat + self.tick - time.monotonic()))
            ready = self._wait(timeout)
            if buffered or self.sock in ready:
                self._read_frames(self.sock in ready)
            self.on_frames()
            parent = self.parent
            if parent is not None and parent.conn in ready:
                self._serve_parent(parent)
            if self.wakeup.reader in ready and self.wakeup.read():
                self.on_stop()
            self.on_turn(ready)
            now = time.monotonic()
            if now - last_beat >= self.tick:
                if self.settings.heartbeat:
                    self.conn.heartbeat_check()
                last_beat = now

    def _wait(self, timeout: float) -> set[Any]:
        """One epoll set kept across turns, rebuilt only when what to watch changes.

        Building a poller on every turn was a tenth of a busy consumer's
        time. The set is rebuilt, not patched: a worker's sentinel is a bare
        fd number that the next worker's may reuse (epoll forgot the closed
        one), and a closed pipe cannot be unregistered.
        """
        parent = self.parent
        parent_open = parent is not None and not parent.closed
        key = (self.watch_key(), parent_open)
        if key != self._watching:
            objs = [self.sock, self.wakeup.reader, *self.watched()]
            if parent_open:
                objs.append(parent.conn)
            self._selector_for(objs)
            self._watching = key
        return {key.fileobj for key, _ in self._selector.select(timeout)}

    def _selector_for(self, objs: list[Any]) -> selectors.BaseSelector:
        self._selector.close()
        self._selector = selectors.DefaultSelector()
        for obj in objs:
            self._selector.register(obj, selectors.EVENT_READ)
        return self._selector

    def _read_frames(self, readable: bool) -> None:
        """Read what the socket holds and dispatch every whole frame in it.

        One read per wakeup, straight into py-amqp's read buffer, then its
        frame parser on the buffer: no per-frame recv calls, and none of
        `drain_events`' socket-timeout switching (two syscalls a call) or
        its timeout exception at the end. A partial frame stays buffered
        until the rest arrives and wakes the loop again.
        """
        transport = self.transport
        if readable:
            try:
                data = os.read(self.sock.fileno(), READ_SIZE)
            except BlockingIOError:
                data = None
            if data == b"":
                raise ConnectionResetError("RabbitMQ closed the connection")
            if data:
                transport._read_buffer += data
        while has_frame(transport):
            try:
                self.amqp.on_inbound_frame(transport.read_frame())
            except ConsumerCancelled:
                self.on_consumer_cancelled()

    def _serve_parent(self, parent: supervision.Link) -> None:
        while not parent.closed and parent.pending():
            try:
                msg = parent.recv(0)
            except supervision.SupervisorGone:
                self.on_stop()
                return
            if msg is None:
                return
            if msg[0] == "call":
                parent.answer(msg, self.handle_call)
            elif msg[0] == "cast":
                self.handle_cast(msg[1])


def _what(code: ExitCode) -> str:
    return "cannot reach the broker" if code is ExitCode.NO_BROKER else \
        "lost the broker connection"
