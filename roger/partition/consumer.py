"""The consumer process: one per queue, owner of its AMQP connection.

It never runs job code. One thread, one loop, one `wait()` over: the AMQP
socket, its link to the partition supervisor, the signal self-pipe, and its
worker pool (worker sentinels and outcome pipes). So heartbeats, acks and
control calls are served while jobs run, and an idle consumer sleeps.

A delivery is decoded and validated here (bad input goes to
``<partition>-<queue>.rejected`` with its reason), handed to an idle worker,
and acked only once settled: done, failed (not retryable), republished to a
retry queue, or buried. The prefetch equals the pool size, so a delivery
almost never waits for a worker.

Shutdown (SIGTERM from the partition supervisor, or a ``drain`` cast):
stop consuming, hand prefetched jobs back, wait up to `shutdown_timeout`
for running jobs, then kill the rest and reject them with requeue: a job is
never lost to a shutdown.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import ConsumerCancelled

import supervision
from roger import message, registry
from roger.amqp import broker, frames
from roger.amqp.frames import READ_SIZE, AckBatcher, buffer_reads, has_frame
from roger.callbacks import Callbacks
from roger.errors import BadMessage, JobTimeout, WorkerCrashed
from roger.partition import settlement
from roger.partition.coordinator_link import GlobalClient
from roger.partition.pool import WorkerPool
from roger.partition.worker import decide
from supervision.events import signal_name
from supervision.signals import Wakeup

log = logging.getLogger("roger.consumer")


EXIT_CONNECTION_LOST = 4


@dataclass
class Inflight:
    job: Any
    slot_id: str
    started: float
    deadline: float | None
    kill_reason: str | None = None


def run_consumer(partition: str, queue: str, workers: int, settings: Any) -> None:
    """Consumer process main (the `start` of its ChildSpec)."""
    Consumer(partition, queue, workers, settings).run()


class Consumer:
    def __init__(self, partition: str, queue: str, workers: int, settings: Any) -> None:
        self.partition, self.queue, self.workers = partition, queue, workers
        self.settings = settings
        self.qname = broker.queue_name(partition, queue)
        self.tag = f"{partition}/{queue}"
        self.inflight: dict[int, Inflight] = {}
        self.backlog: deque[tuple[int, bool, bytes, Any]] = deque()
        self.ctag: str | None = None
        self.draining = False
        self.drain_deadline = 0.0
        self.closing = False
        self.settled = 0
        self.acquired: set[str] = set()  # ids of jobs holding their execution key here
        self.inbox: deque[tuple[Any, tuple]] = deque()  # AMQP callbacks' work, run by the loop
        self.acks = AckBatcher()
        self.selector = selectors.DefaultSelector()
        self.registered: tuple[int, bool] | None = None  # what the epoll set was built for

    # ---------------------------------------------------------------- lifecycle

    def run(self) -> None:
        self._install_signals()
        registry.import_modules(self.settings.imports)
        self.callbacks = Callbacks.load(self.settings.callbacks)
        self._connect()
        self.pool = WorkerPool(self.partition, self.queue, self.settings, self.workers,
                               self._on_outcome, self._on_lost,
                               inherited=lambda: [self.sock, self._wake_r, self._wake_w])
        self.pool.open()
        try:
            self._subscribe()
            supervision.ready()
            log.info("[%s] consuming %s with %d workers", self.tag, self.qname, self.workers)
            self._loop()
        except frames.CONNECTION_ERRORS as e:
            # Jobs in flight are not acked, so RabbitMQ requeues them; our
            # supervisor starts a fresh consumer that reconnects.
            log.error("[%s] lost the broker connection: %s", self.tag, e)
            self.closing = True
            raise SystemExit(EXIT_CONNECTION_LOST) from None
        finally:
            self._close()

    def _connect(self) -> None:
        s = self.settings
        try:
            self.conn = frames.connect(s)
        except ConnectionError as e:
            log.error("[%s] %s", self.tag, e)
            raise SystemExit(3) from None
        self.amqp = self.conn.connection
        self.sock = self.amqp.sock
        buffer_reads(self.amqp.transport)
        self.channel = self.conn.channel()
        broker.declare_queues(self.channel, s, self.partition, self.queue, retry=False)
        # Settling publishes (retry, buried, rejected) are confirmed on their
        # own channel before the original delivery is acked.
        self.settle_channel = self.conn.channel()
        self.coord = GlobalClient(self.conn, s, self.partition,
                                  self._later(self._on_broadcast),
                                  self._later(self._on_acquired))
        self.coord.start()
        self.last_heartbeat = time.monotonic()

    def _close(self) -> None:
        self.closing = True
        # Workers stop before any message goes back: a job requeued while its
        # worker still ran could start on another node at the same moment.
        # Answers already written are settled as the pool reads them; the
        # jobs of killed workers are requeued by _on_lost (we are closing).
        self.pool.close()
        try:
            self._flush_acks()
        except Exception:  # the connection is gone: those jobs run again
            pass
        for tag in list(self.inflight):
            self.inflight.pop(tag)
            self._reject_requeue(tag)
        self._requeue_backlog()
        try:
            self.conn.release()
        except Exception:
            pass

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        parent = supervision.parent() if supervision.is_supervised() else None
        while True:
            if self.draining:
                if not self.inflight:
                    log.info("[%s] drained", self.tag)
                    return
                if time.monotonic() >= self.drain_deadline:
                    log.warning("[%s] %d jobs still running after shutdown_timeout; killing "
                                "them, their messages go back to the queue", self.tag,
                                len(self.inflight))
                    return
            # Frames may wait in py-amqp's buffer (read while waiting for a
            # confirm, say), where epoll cannot see them.
            buffered = has_frame(self.amqp.transport)
            ready = self._wait(parent, 0.0 if buffered else self._next_timeout())
            if buffered or self.sock in ready:
                self._drain_amqp(self.sock in ready)
                self._run_inbox()
            if parent is not None and parent.conn in ready:
                self._serve(parent)
            if self._wake_r in ready:
                self._on_signal()
            self.pool.handle(ready)
            self._run_inbox()  # settling drains the socket too
            self._check_deadlines()
            self._dispatch_backlog()
            self._flush_acks()
            self._heartbeat()

    def _wait(self, parent: supervision.Link | None, timeout: float) -> set[Any]:
        """Like `multiprocess.connection.wait`, with one epoll set kept across turns.

        Building a poller and registering every descriptor on each turn was
        a tenth of the consumer's time. What to watch changes only when the
        pool's generation moves (a worker starts or exits) or the parent link
        closes; then the set is rebuilt, not patched: a worker's sentinel is
        a bare fd number that the next worker's may reuse (epoll forgot the
        closed one), and a dead worker's closed pipe cannot be unregistered.
        """
        parent_open = parent is not None and not parent.closed
        key = (self.pool.generation, parent_open)
        if key != self.registered:
            objs = [self.sock, self._wake_r, *self.pool.wait_objects()]
            if parent_open:
                objs.append(parent.conn)
            self.selector.close()
            self.selector = selectors.DefaultSelector()
            for obj in objs:
                self.selector.register(obj, selectors.EVENT_READ)
            self.registered = key
        return {key.fileobj for key, _ in self.selector.select(timeout)}

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = self.settings.heartbeat / 4 if self.settings.heartbeat else 5.0
        for entry in self.inflight.values():
            if entry.deadline is not None and entry.kill_reason is None:
                timeout = min(timeout, entry.deadline - now)
        if self.draining:
            timeout = min(timeout, self.drain_deadline - now)
        return max(0.0, timeout)

    def _drain_amqp(self, readable: bool = True) -> None:
        """Read what the socket holds and dispatch every whole frame in it.

        One read per wakeup, straight into py-amqp's read buffer, then its
        frame parser on the buffer: no per-frame recv calls, and none of
        `drain_events`' socket-timeout switching (two syscalls a call) or
        its timeout exception at the end. A partial frame stays buffered
        until the rest arrives and wakes the loop again.
        """
        transport = self.amqp.transport
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
                # The queue was deleted (or the broker cancelled us): declare
                # it again and carry on; jobs in flight are still ours to ack.
                log.warning("[%s] the broker cancelled our subscription to %s; "
                            "declaring it again", self.tag, self.qname)
                self.ctag = None
                broker.declare_queues(self.channel, self.settings, self.partition, self.queue,
                                      retry=False)
                self._subscribe()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.settings.heartbeat and now - self.last_heartbeat >= self.settings.heartbeat / 4:
            self.conn.heartbeat_check()
            self.last_heartbeat = now

    # --------------------------------------------------------------- deliveries

    def _later(self, fn: Any) -> Any:
        """Wrap an AMQP callback so that it only queues its work.

        py-amqp runs callbacks inside `drain_events`, and our work itself
        waits on the connection (confirms, declarations): done right there it
        would nest one wait in another on the same channel, and the inner one
        can take the outer one's reply. The loop runs the queued work after
        the socket is drained, one item at a time.
        """
        return lambda *args: self.inbox.append((fn, args))

    def _run_inbox(self) -> None:
        while self.inbox:
            fn, args = self.inbox.popleft()
            fn(*args)

    def _on_delivery(self, msg: Any) -> None:
        info = msg.delivery_info
        tag, redelivered = info["delivery_tag"], bool(info.get("redelivered"))
        self.acks.delivered(tag)
        body = msg.body if isinstance(msg.body, bytes) else msg.body.encode()
        props = msg.properties
        if len(body) > self.settings.max_message_bytes:
            self._reject(tag, body, props, BadMessage(
                "too_large", f"{len(body)} bytes > max_message_bytes"))
            return
        try:
            job = message.decode(body, props.get("content_type"))
        except BadMessage as e:
            self._reject(tag, body, props, e)
            return
        job.partition, job.queue, job.redelivered = self.partition, self.queue, redelivered
        if self.draining or self.ctag is None:
            self._reject_requeue(tag)  # in flight when we stopped consuming
            return
        if self.coord.is_cancelled(job.id):
            self._cancelled(tag, job)
        elif any(entry.job.id == job.id for entry in self.inflight.values()):
            # The same job published twice and delivered together: running it
            # twice at once is never wanted; the copy is moved aside.
            self._reject(tag, body, props, BadMessage(
                "duplicate_id", f"job {job.id} is already running in this consumer"))
        elif job.execution_key is not None and job.id not in self.acquired:
            self.coord.acquire(job, (tag, redelivered, body, job))
        else:
            self._admit(tag, redelivered, body, job)

    def _admit(self, tag: int, redelivered: bool, body: bytes, job: Any) -> None:
        if self.pool.has_capacity() and not self.backlog:
            self._run(tag, redelivered, body, job)
        else:
            self.backlog.append((tag, redelivered, body, job))

    def _on_acquired(self, context: tuple, ok: bool) -> None:
        tag, redelivered, body, job = context
        if self.closing:
            return
        if self.draining:
            if ok:
                self.coord.release_exec(job)
            self._reject_requeue(tag)
            return
        if ok:
            self.acquired.add(job.id)
            self._admit(tag, redelivered, body, job)
        else:
            # Another job holds the key: wait in line (FIFO) in its waiting queue.
            log.info("[%s] job %s waits for execution key %s", self.tag, job.id,
                     job.execution_key)
            self.coord.park(job, body, self.queue)
            self._ack(tag)

    def _on_broadcast(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "cancel":
            for entry in self.inflight.values():
                if entry.job.id == event["job_id"] and entry.kill_reason is None:
                    entry.kill_reason = "cancelled"
                    log.info("[%s] job %s cancelled while running; killing its worker",
                             self.tag, entry.job.id)
                    self.pool.kill(entry.slot_id)
                    break
        elif kind in ("pause", "resume") and event.get("queue") == self.queue:
            if kind == "pause":
                self._unsubscribe()
            else:
                self._subscribe()
            log.info("[%s] %sd", self.tag, kind)

    def _run(self, tag: int, redelivered: bool, body: bytes, job: Any) -> None:
        slot = self.pool.dispatch(tag, redelivered, body)
        now = time.monotonic()
        limit = job.max_execution_time
        job.started_at = int(time.time() * 1000)
        self.inflight[tag] = Inflight(job, slot.id, now, now + limit if limit else None)
        log.debug("[%s] job %s (%s) started in worker %d", self.tag, job.id, job.name, slot.pid)

    def _dispatch_backlog(self) -> None:
        while self.backlog and not self.draining and self.pool.has_capacity():
            tag, redelivered, body, job = self.backlog.popleft()
            if self.coord.is_cancelled(job.id):
                self._cancelled(tag, job)
            else:
                self._run(tag, redelivered, body, job)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for entry in list(self.inflight.values()):
            if entry.deadline is not None and entry.kill_reason is None and now >= entry.deadline:
                entry.kill_reason = "timeout"
                log.warning("[%s] job %s (%s) exceeded max_execution_time %s s; killing worker",
                            self.tag, entry.job.id, entry.job.name, entry.job.max_execution_time)
                self.pool.kill(entry.slot_id)

    # ----------------------------------------------------------------- settling

    def _on_outcome(self, tag: int, error: dict | None) -> None:
        entry = self.inflight.pop(tag, None)
        if entry is None:
            return
        if error is None:
            log.debug("[%s] job %s done", self.tag, entry.job.id)
            self._settle(tag, entry.job, "done", None)
        else:
            self._settle(tag, entry.job, error["disposition"], error["error"])

    def _on_lost(self, tag: int, exitcode: int | None) -> None:
        entry = self.inflight.pop(tag, None)
        if entry is None:
            return
        if self.closing:
            self._reject_requeue(tag)
            return
        job = entry.job
        if entry.kill_reason == "cancelled":
            self._cancelled(tag, job)
            return
        if entry.kill_reason == "timeout":
            error: Exception = JobTimeout(
                f"job ran longer than max_execution_time={job.max_execution_time} s")
            reason = "timeout"
        else:
            error = WorkerCrashed(exitcode if exitcode is not None and exitcode >= 0 else None,
                                  signal_name(exitcode))
            reason = "worker_crashed"
        text = f"{type(error).__name__}: {error}"
        log.error("[%s] job %s (%s) failed: %s", self.tag, job.id, job.name, text)
        tb = f"{text} (job {job.id} in worker of {self.tag})\n"
        self.callbacks.call("on_error", self.partition, job, error, tb, None)
        disposition = decide(job, self.settings.retry_levels)
        if disposition == "bury":
            self.callbacks.call("on_buried", self.partition, job, error, tb, None)
        self._settle(tag, job, disposition, text, reason)

    def _settle(self, tag: int, job: Any, disposition: str, error: str | None,
                reason: str = "error") -> None:
        if disposition == "retry":
            settlement.publish_retry(self.settle_channel, self.settings, job, error or "")
        elif disposition == "bury":
            settlement.publish_buried(self.settle_channel, self.settings, job, reason, error or "")
        # Keys are released before the ack: a crash in between runs the job
        # again (at least once) rather than leaving a key taken forever.
        if job.queue_key is not None and disposition != "retry":
            self.coord.release_queue_key(job)
        if job.id in self.acquired or (disposition == "cancelled"
                                       and job.execution_key is not None):
            # A cancelled job may hold its key without having run: the
            # coordinator handed it over when it left the waiting queue.
            self.acquired.discard(job.id)
            self.coord.release_exec(job)
        self._ack(tag)
        self.settled += 1

    def _cancelled(self, tag: int, job: Any) -> None:
        log.info("[%s] job %s (%s) cancelled", self.tag, job.id, job.name)
        self.callbacks.call("on_cancel", self.partition, job)
        self._settle(tag, job, "cancelled", None)

    def _reject(self, tag: int, body: bytes, props: dict, error: BadMessage) -> None:
        log.error("[%s] message %s rejected (%s): %s", self.tag, props.get("message_id", "?"),
                  error.reason, error)
        settlement.publish_rejected(self.settle_channel, self.settings, self.partition, self.queue,
                               body, props.get("application_headers") or {}, error.reason,
                               detail=error.detail or None,
                               content_type=props.get("content_type"),
                               message_id=props.get("message_id"))
        self._ack(tag)

    def _reject_requeue(self, tag: int) -> None:
        self.acks.forget(tag)
        try:
            self.channel.basic_reject(tag, requeue=True)
        except Exception:  # the connection is gone: the broker requeues anyway
            pass

    def _ack(self, tag: int) -> None:
        # Acks go out once per loop turn (`_flush_acks`): RabbitMQ gets one
        # `multiple` ack for every run of settled deliveries.
        self.acks.settled(tag)

    def _flush_acks(self) -> None:
        for tag, multiple in self.acks.flush():
            self.channel.basic_ack(tag, multiple=multiple)

    def _requeue_backlog(self) -> None:
        while self.backlog:
            self._reject_requeue(self.backlog.popleft()[0])

    # ------------------------------------------------------------ subscription

    def _subscribe(self) -> None:
        if (self.workers > 0 and self.ctag is None and not self.draining
                and self.queue not in self.coord.paused):
            self.channel.basic_qos(0, self.workers, False)
            self.ctag = self.channel.basic_consume(self.qname,
                                                   callback=self._later(self._on_delivery))

    def _unsubscribe(self) -> None:
        if self.ctag is not None:
            try:
                self.channel.basic_cancel(self.ctag)
            except ConsumerCancelled:
                pass  # the broker cancelled it first: same outcome
            self.ctag = None
        self._requeue_backlog()

    def set_workers(self, workers: int) -> None:
        """Resize: the prefetch follows the pool; in-flight jobs are untouched."""
        if workers == self.workers:
            return
        # A consumer's prefetch is fixed when it subscribes, hence cancel and
        # subscribe again; unacked deliveries stay valid on the channel.
        self._unsubscribe()
        self.workers = workers
        self.pool.resize(workers)
        self._subscribe()
        log.info("[%s] now %d workers", self.tag, workers)

    def begin_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + self.settings.shutdown_timeout
        self._unsubscribe()
        log.info("[%s] stopping: %d jobs running, waiting up to %s s", self.tag,
                 len(self.inflight), self.settings.shutdown_timeout)

    # ------------------------------------------------------------------ control

    def _serve(self, parent: supervision.Link) -> None:
        while not parent.closed and parent.pending():
            try:
                msg = parent.recv(0)
            except supervision.SupervisorGone:
                self.begin_drain()
                return
            if msg is None:
                return
            if msg[0] == "call":
                parent.answer(msg, self._handle_call)
            elif msg[0] == "cast" and msg[1] == ("drain",):
                self.begin_drain()

    def _handle_call(self, payload: tuple) -> Any:
        op = payload[0]
        if op == "set_workers":
            self.set_workers(int(payload[1]))
            return self.status()
        if op == "status":
            return self.status()
        raise ValueError(f"unknown consumer request {op!r}")

    def status(self) -> dict:
        running = self.pool.running()
        declared = self.channel.queue_declare(self.qname, passive=True)
        return {
            "queue": self.queue,
            "max_workers": self.workers,
            "consuming": self.ctag is not None,
            "paused": self.queue in self.coord.paused,
            "message_count": declared.message_count,
            "consumer_count": declared.consumer_count,
            "pid": os.getpid(),
            "workers": sorted(s.pid for s in self.pool.slots.values()),
            "settled": self.settled,
            "running": [
                {"id": e.job.id, "name": e.job.name, "started_at": e.job.started_at,
                 "worker_pid": running[t].pid if t in running else None,
                 "record": message.encode(e.job).decode()}
                for t, e in self.inflight.items()
            ],
        }

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        wakeup = Wakeup()
        self._wake_r, self._wake_w = wakeup.reader, wakeup.writer
        self._wakeup = wakeup

    def _on_signal(self) -> None:
        if self._wakeup.read():
            self.begin_drain()
