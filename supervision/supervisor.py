"""The supervisor: starts children in order, restarts them by strategy, stops them in reverse.

Design. A supervisor is an event loop over `multiprocess.connection.wait`:
child sentinels (a child exited), child links (replies and events), the
links it serves (its own parent's, and a control pipe for other threads),
and a self-pipe for signals. It never polls on a timer, so an idle tree
costs no CPU.

The loop can run three ways:

- `run()`: in the calling process, blocking; SIGTERM/SIGINT shut it down
  when called from the main thread.
- `start()`: in a new child process; returns a `SupervisorHandle`.
- embedded in another loop: `open()`, then select on `wait_objects()` and
  pass what is ready to `handle()`, and `close()` at the end. roger's
  consumer runs its worker pool this way, beside its AMQP socket.

Runtime control (`start_child`, `which_children`, ...) runs directly when
called on the loop's own thread and is sent over the control pipe from any
other thread, so the loop stays the only owner of its children.

Starting and stopping children are synchronous, as in OTP: the loop waits,
within each child's `start_timeout` and `shutdown`, and then goes on.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import multiprocess
from multiprocess.connection import wait

from . import link as link_mod
from . import process
from .client import SupervisorAPI, SupervisorHandle
from .errors import (
    ChildExists,
    ChildRunning,
    StartFailed,
    SupervisionError,
    SupervisorGone,
    UnknownChild,
)
from .events import ChildInfo, Event, describe_exit
from .intensity import RestartWindow
from .signals import Wakeup
from .spec import ChildSpec, check_flags

log = logging.getLogger("supervision")

EXIT_GAVE_UP = 1  # the exit code of a supervisor that exceeded its restart intensity


@dataclass
class _Child:
    spec: ChildSpec
    proc: Any = None
    link: link_mod.Link | None = None
    restarts: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor(SupervisorAPI):
    """A supervisor of OS processes with OTP's strategies and restart intensity.

    >>> sup = Supervisor([ChildSpec("db", run_db), ChildSpec("web", run_web)],
    ...                  strategy="rest_for_one", intensity=3, period=5.0)
    >>> handle = sup.start()          # the loop in its own process
    >>> handle.which_children()
    >>> handle.stop()

    `on_event(event)` receives every `Event` (see `supervision.events`);
    `handler(supervisor, payload)` answers calls that are not supervisor
    operations (roger uses it for its own requests); `on_start(supervisor)`
    runs in `run()` once the children started and before the supervisor
    reports ready (to start more children dynamically); `on_shutdown(supervisor)`
    runs once when an orderly shutdown begins, before children are stopped.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        strategy: str = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        name: str | None = None,
        auto_shutdown: str = "never",
        on_event: Callable[[Event], Any] | None = None,
        handler: Callable[[Supervisor, Any], Any] | None = None,
        on_shutdown: Callable[[Supervisor], Any] | None = None,
        on_start: Callable[[Supervisor], Any] | None = None,
    ) -> None:
        check_flags(strategy, intensity, period, auto_shutdown)
        self.name = name or "supervisor"
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.auto_shutdown = auto_shutdown
        self.on_event = on_event
        self.handler = handler
        self.on_shutdown = on_shutdown
        self.on_start = on_start
        self._children: dict[Any, _Child] = {}
        for spec in children:
            if spec.id in self._children:
                raise ChildExists(f"{self.name}: two children have the id {spec.id!r}")
            self._children[spec.id] = _Child(spec)
        self._window = RestartWindow(intensity, period)
        self._loop_pid: int | None = None
        self._loop_thread: int | None = None
        self._served: list[link_mod.Link] = []
        self._ctl_client: link_mod.Link | None = None
        self._ctl_lock = threading.Lock()
        self._wake_r: socket.socket | None = None
        self._parent_sentinel: Any = None
        self._stopping = False
        self._done = False
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._timer_seq = itertools.count()
        self.exit_code = 0

    def __repr__(self) -> str:
        state = "running" if self._in_loop() or self._loop_pid else "idle"
        return f"<{type(self).__name__} {self.name!r} {self.strategy} {state}, " \
               f"{sum(c.running for c in self._children.values())} children running>"

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Run the loop in this process until shutdown.

        Returns after an orderly shutdown (SIGTERM, SIGINT, `stop()`, an
        `auto_shutdown`); raises ``SystemExit(1)`` after shutting its
        children down when the restart intensity is exceeded, which is the
        escalation to its own parent.
        """
        restore = self._install_signals()
        try:
            try:
                self.open()
            except StartFailed as e:
                log.error("%s: could not start: %s", self.name, e)
                raise SystemExit(EXIT_GAVE_UP) from None
            if self.on_start is not None:
                self.on_start(self)
            if link_mod.is_supervised():
                parent = link_mod.parent()
                self._served.append(parent)
                pp = multiprocess.parent_process()
                self._parent_sentinel = pp.sentinel if pp is not None else None
                parent.ready()
            while not self._done:
                self.handle(wait(self.wait_objects(), self.next_timeout()))
        finally:
            self.close()
            restore()
        if self.exit_code:
            raise SystemExit(self.exit_code)

    def start(self, timeout: float = 60.0) -> SupervisorHandle:
        """Run this supervisor in a new child process; return once its children started."""
        spec = ChildSpec(self.name, self.run, type="supervisor", start_timeout=timeout)
        proc, link = process.spawn(spec)
        try:
            _await_ready(proc, link, spec)
        except StartFailed:
            process.terminate(proc, "brutal_kill", self.name)
            raise
        return SupervisorHandle(proc, link, self.name)

    def open(self) -> None:
        """Start the children in order, ready to be driven by `handle()`."""
        self._loop_pid = os.getpid()
        self._loop_thread = threading.get_ident()
        self._done = self._stopping = False
        ctl_server, ctl_client = process._ctx.Pipe(duplex=True)
        self._ctl_client = link_mod.Link(ctl_client)
        self._served.append(link_mod.Link(ctl_server))
        started: list[_Child] = []
        for child in list(self._children.values()):
            try:
                self._start(child)
            except StartFailed:
                for c in reversed(started):
                    self._terminate(c)
                raise
            started.append(child)

    def wait_objects(self) -> list[Any]:
        """Everything the loop waits on; pass what is ready to `handle()`."""
        objs: list[Any] = []
        for c in self._children.values():
            if c.proc is not None:
                objs.append(c.proc.sentinel)
                if c.link is not None and not c.link.closed:
                    objs.append(c.link.conn)
        objs.extend(s.conn for s in self._served if not s.closed)
        if self._wake_r is not None:
            objs.append(self._wake_r)
        if self._parent_sentinel is not None:
            objs.append(self._parent_sentinel)
        return objs

    def sentinel(self, child_id: Any) -> int | None:
        """Embedded mode: the fd that becomes readable when child `child_id` exits.

        None when the child is not running. For waiting on a child that is
        expected to exit by itself (an idle worker whose pipe was closed).
        """
        child = self._children.get(child_id)
        return child.proc.sentinel if child is not None and child.proc is not None else None

    def next_timeout(self) -> float | None:
        """Seconds until the next `call_later` timer is due (None: no timer)."""
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run `fn()` in the loop after `delay` seconds (loop thread only).

        The loop sleeps until then rather than polling; a supervisor that
        retries something with backoff uses this.
        """
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now and not self._done:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("%s: timer callback failed", self.name)

    def handle(self, ready: Iterable[Any]) -> None:
        """Process what `wait_objects()` reported ready, and due timers."""
        ready = list(ready)
        # Whose sentinel is which, taken before anything below runs: a restart
        # frees dead children's fds, and a new child's sentinel may get the
        # number of one still in `ready`; that must not be taken for its exit
        # (joining a live child would block the loop for good).
        sentinels = {c.proc.sentinel: (c, c.proc)
                     for c in self._children.values() if c.proc is not None}
        # Messages before exits: a child's last event must be seen before its death.
        for obj in ready:
            for c in list(self._children.values()):
                if c.link is not None and obj is c.link.conn:
                    self._drain_child(c)
            for s in list(self._served):
                if obj is s.conn:
                    self._serve(s)
        for obj in ready:
            if obj is self._wake_r:
                self._on_signals()
            elif obj is self._parent_sentinel:
                log.warning("%s: parent process died; shutting down", self.name)
                self._parent_sentinel = None
                self.shutdown()
            elif obj in sentinels:
                c, proc = sentinels[obj]
                if c.proc is proc:
                    self._on_exit(c)
        if self._timers:
            self._run_timers()

    def close(self) -> None:
        """Stop every child in reverse start order; the loop ends."""
        if self._loop_pid != os.getpid():
            return
        if not self._stopping:
            self._begin_shutdown()
        for c in reversed(list(self._children.values())):
            if c.running:
                self._terminate(c)
        for s in self._served:
            if not s.closed:
                s.close()
        self._served.clear()
        if self._ctl_client is not None:
            self._ctl_client.close()
        self._done = True
        self._loop_pid = self._loop_thread = None

    def shutdown(self) -> None:
        """Begin an orderly shutdown from inside the loop (e.g. in a handler)."""
        if not self._stopping:
            self._begin_shutdown()
        self._done = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    # ---------------------------------------------------------- runtime control

    def _in_loop(self) -> bool:
        return self._loop_pid == os.getpid() and self._loop_thread == threading.get_ident()

    def _request(self, payload: tuple, timeout: float | None) -> Any:
        if self._in_loop():
            return self._dispatch(payload)
        if self._loop_pid != os.getpid() or self._ctl_client is None:
            raise SupervisorGone(f"{self.name} is not running in this process")
        with self._ctl_lock:
            return self._ctl_client.call(payload, timeout)

    def _dispatch(self, payload: Any) -> Any:
        if isinstance(payload, tuple) and payload and isinstance(payload[0], str):
            op = getattr(self, f"_op_{payload[0]}", None)
            if op is not None:
                return op(*payload[1:])
        if self.handler is None:
            raise SupervisionError(f"{self.name}: unknown request {payload!r}")
        return self.handler(self, payload)

    def call_child(self, child_id: Any, payload: Any, timeout: float | None = 30.0) -> Any:
        """Call a child over its link and return its reply (bounded by `timeout`)."""
        if not self._in_loop():
            return self._request(("call_child", child_id, payload, timeout), timeout)
        child = self._get(child_id)
        if child.link is None:
            raise SupervisorGone(f"{self.name}: child {child_id!r} is not running")
        try:
            return child.link.call(payload, timeout)
        finally:
            if child.link is not None and child.link._stash:
                self._drain_child(child)

    def cast_child(self, child_id: Any, payload: Any) -> None:
        """Send a child a message that wants no reply."""
        if not self._in_loop():
            return self._request(("cast_child", child_id, payload), 10.0)
        child = self._get(child_id)
        if child.link is None:
            raise SupervisorGone(f"{self.name}: child {child_id!r} is not running")
        child.link.cast(payload)

    def _op_start_child(self, spec: ChildSpec) -> Any:
        if not isinstance(spec, ChildSpec):
            raise SupervisionError(f"start_child needs a ChildSpec, got {spec!r}")
        if spec.id in self._children:
            raise ChildExists(f"{self.name}: a child with id {spec.id!r} exists")
        child = _Child(spec)
        self._children[spec.id] = child
        try:
            self._start(child)
        except StartFailed:
            del self._children[spec.id]
            raise
        return spec.id

    def _op_start_children(self, specs: list[ChildSpec]) -> dict[Any, str | None]:
        """Spawn every child first, then wait for each: the starts overlap.

        Each child still gets its own `start_timeout`. The answer maps each id
        to None (started) or why it did not start; a failed child is dropped.
        """
        ids = [spec.id for spec in specs if isinstance(spec, ChildSpec)]
        if len(ids) < len(specs):
            raise SupervisionError(f"start_children needs ChildSpecs, got {specs!r}")
        for child_id in ids:
            if child_id in self._children or ids.count(child_id) > 1:
                raise ChildExists(f"{self.name}: a child with id {child_id!r} exists")
        spawned = []
        for spec in specs:
            child = self._children[spec.id] = _Child(spec)
            proc, link = self._spawn(child)
            # Listed at once, so the next spawn closes this child's pipe end:
            # a sibling must never hold it open.
            child.proc, child.link = proc, link
            spawned.append((child, proc, link))
        answer: dict[Any, str | None] = {}
        for child, proc, link in spawned:
            child.proc = child.link = None
            try:
                self._await_started(child, proc, link)
                answer[child.spec.id] = None
            except StartFailed as e:
                del self._children[child.spec.id]
                answer[child.spec.id] = str(e)
        return answer

    def _op_terminate_child(self, child_id: Any) -> None:
        child = self._get(child_id)
        if child.running:
            self._terminate(child)
        if not self._keeps_stopped(child):
            self._children.pop(child_id, None)

    def _op_restart_child(self, child_id: Any) -> Any:
        child = self._get(child_id)
        if child.running:
            raise ChildRunning(f"{self.name}: child {child_id!r} is running")
        self._start(child)
        return child.pid

    def _op_delete_child(self, child_id: Any) -> None:
        child = self._get(child_id)
        if child.running:
            raise ChildRunning(f"{self.name}: child {child_id!r} is running")
        del self._children[child_id]

    def _op_which_children(self) -> list[ChildInfo]:
        return [
            ChildInfo(c.spec.id, c.pid, c.spec.type, c.spec.restart,
                      "running" if c.running else "stopped", c.restarts)
            for c in self._children.values()
        ]

    def _op_count_children(self) -> dict[str, int]:
        specs = list(self._children.values())
        return {
            "specs": len(specs),
            "active": sum(c.running for c in specs),
            "supervisors": sum(c.spec.type == "supervisor" for c in specs),
            "workers": sum(c.spec.type == "worker" for c in specs),
        }

    def _op_stop(self) -> None:
        self.shutdown()

    def _op_call_child(self, child_id: Any, payload: Any, timeout: float | None) -> Any:
        return self.call_child(child_id, payload, timeout)

    def _op_cast_child(self, child_id: Any, payload: Any) -> None:
        self.cast_child(child_id, payload)

    def _get(self, child_id: Any) -> _Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise UnknownChild(f"{self.name}: no child with id {child_id!r}") from None

    # ---------------------------------------------------------------- internals

    def _serve(self, served: link_mod.Link) -> None:
        while True:
            try:
                if not served.pending():
                    return
                msg = served.recv(0)
            except SupervisorGone:
                served.close()
                if link_mod.is_supervised() and served is link_mod.parent():
                    log.warning("%s: link to parent closed; shutting down", self.name)
                    self.shutdown()
                return
            if msg is None:
                return
            if msg[0] == "call":
                served.answer(msg, self._dispatch)
                if self._done:
                    return
            elif msg[0] == "cast" and self.handler is not None:
                try:
                    self.handler(self, msg[1])
                except Exception:
                    log.exception("%s: handler failed on a cast", self.name)

    def _drain_child(self, child: _Child) -> None:
        link = child.link
        while link is not None and not link.closed:
            try:
                if not link.pending():
                    return
                msg = link.recv(0)
            except SupervisorGone:
                link.close()  # the sentinel tells us why
                return
            if msg is None:
                return
            if msg[0] == "event":
                self._emit("message", child, payload=msg[1])
            elif msg[0] == "call":
                # A child asking its supervisor: the same operations and
                # handler as a call from above (roger's system process asks
                # its node for status this way).
                try:
                    link.answer(msg, self._dispatch)
                except SupervisorGone:
                    pass  # it died waiting; its sentinel tells the rest
            link = child.link

    def _start(self, child: _Child) -> None:
        self._await_started(child, *self._spawn(child))

    def _spawn(self, child: _Child) -> tuple[Any, link_mod.Link]:
        return process.spawn(child.spec, (), self._close_in_child())

    def _await_started(self, child: _Child, proc: Any, link: link_mod.Link) -> None:
        spec = child.spec
        if spec.notify_ready:
            try:
                _await_ready(proc, link, spec)
            except StartFailed as e:
                process.terminate(proc, "brutal_kill", f"{self.name}/{spec.id}")
                link.close()
                self._emit("start_failed", child, pid=proc.pid, exitcode=proc.exitcode)
                raise StartFailed(f"{self.name}: child {spec.id!r}: {e}") from None
        child.proc, child.link = proc, link
        self._emit("started", child)
        if link._stash:  # sent before ready(): the pipe will not wake the loop for them
            self._drain_child(child)

    def _close_in_child(self) -> list[Any]:
        objs: list[Any] = [s.conn for s in self._served]
        objs.extend(c.link.conn for c in self._children.values() if c.link is not None)
        if self._ctl_client is not None:
            objs.append(self._ctl_client.conn)
        if self._wake_r is not None:
            objs.extend([self._wake_r, self._wake_w])
        return objs

    def _terminate(self, child: _Child) -> None:
        proc = child.proc
        name = f"{self.name}/{child.spec.id}"
        process.terminate(proc, child.spec.shutdown, name, interrupt=self._wake_r)
        self._drain_child(child)
        self._forget(child)
        self._emit("terminated", child, pid=proc.pid, exitcode=proc.exitcode)

    def _keeps_stopped(self, child: _Child) -> bool:
        """Whether a child that stopped for good stays listed: as in OTP, all but temporary."""
        return child.spec.restart != "temporary"

    def _forget(self, child: _Child) -> None:
        if child.link is not None:
            child.link.close()
        child.proc = child.link = None

    def _on_exit(self, child: _Child) -> None:
        proc = child.proc
        proc.join()
        self._drain_child(child)
        self._forget(child)
        code = proc.exitcode
        self._emit("exited", child, pid=proc.pid, exitcode=code)
        if self._stopping:
            return
        spec = child.spec
        if not (spec.restart == "permanent" or (spec.restart == "transient" and code != 0)):
            log.info("%s: not restarting %r (%s, %s)", self.name, spec.id, spec.restart,
                     describe_exit(code))
            if not self._keeps_stopped(child):
                self._children.pop(spec.id, None)
            if spec.significant:
                self._check_auto_shutdown()
            return
        self._restart(child)

    def _restart(self, failed: _Child) -> None:
        if not self._window.add():
            self._give_up(failed)
            return
        order = list(self._children.values())
        if self.strategy == "one_for_one":
            again = [failed]
        else:
            start = 0 if self.strategy == "one_for_all" else order.index(failed)
            again = [c for c in order[start:] if c is failed or c.running]
            for c in reversed(again):
                if c.running:
                    self._terminate(c)
            for c in again:
                if c is not failed and c.spec.restart == "temporary":
                    self._children.pop(c.spec.id, None)
            again = [c for c in again if c.spec.id in self._children]
        self._restart_each(again, f"{self.strategy} after {failed.spec.id!r} exited")

    def _restart_each(self, children: list[_Child], reason: str) -> None:
        for i, c in enumerate(children):
            c.restarts += 1
            self._emit("restarting", c, reason=reason)
            try:
                self._start(c)
            except StartFailed as e:
                log.error("%s", e)
                if not self._window.add():
                    self._give_up(c)
                    return
                # As OTP's try_again_restart: retry from the loop, not at once,
                # so that what happened meanwhile is handled first. A start can
                # depend on a sibling (roger's consumer asks its coordinator
                # for state) whose exit is waiting to be handled: retried in
                # place, the start would fail for as long as the loop is held.
                self.call_later(0, functools.partial(self._try_again, children[i:], reason))
                return

    def _try_again(self, children: list[_Child], reason: str) -> None:
        if self._stopping:
            return
        # Skip what changed meanwhile: deleted, or started through the API.
        self._restart_each([c for c in children
                            if self._children.get(c.spec.id) is c and not c.running], reason)

    def _give_up(self, child: _Child) -> None:
        self._emit("intensity_exceeded", child)
        log.error("%s: more than %d restarts within %s s (last: %r); shutting down",
                  self.name, self.intensity, self.period, child.spec.id)
        self.exit_code = EXIT_GAVE_UP
        self.shutdown()

    def _check_auto_shutdown(self) -> None:
        significant = [c for c in self._children.values() if c.spec.significant]
        if self.auto_shutdown == "any_significant" or (
            self.auto_shutdown == "all_significant" and not any(c.running for c in significant)
        ):
            log.info("%s: significant child exited; auto_shutdown=%s", self.name,
                     self.auto_shutdown)
            self.shutdown()

    def _begin_shutdown(self) -> None:
        self._stopping = True
        self._emit("shutdown", None)
        if self.on_shutdown is not None:
            try:
                self.on_shutdown(self)
            except Exception:
                log.exception("%s: on_shutdown failed", self.name)

    def _emit(self, kind: str, child: _Child | None, pid: int | None = None,
              exitcode: int | None = None, payload: Any = None, reason: str | None = None
              ) -> None:
        cid = child.spec.id if child is not None else None
        event = Event(kind, self.name, cid, pid if pid is not None else (
            child.pid if child is not None else os.getpid()), exitcode, payload)
        if kind != "message":
            _log_event(event, child, reason)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("%s: on_event failed on %s", self.name, kind)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        wakeup = Wakeup()
        self._wake_r, self._wake_w = wakeup.reader, wakeup.writer

        def restore() -> None:
            wakeup.close()
            self._wake_r = None

        return restore

    def _on_signals(self) -> None:
        if self._stopping:
            return  # leave the byte: a second signal hurries `process.terminate`
        try:
            data = self._wake_r.recv(64)
        except BlockingIOError:
            return
        names = sorted({signal.Signals(b).name for b in data})
        log.info("%s: %s received; shutting down", self.name, ", ".join(names))
        self.shutdown()




def _await_ready(proc: Any, link: link_mod.Link, spec: ChildSpec) -> None:
    end = time.monotonic() + spec.start_timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise StartFailed(f"not ready within {spec.start_timeout} s")
        ready = wait([proc.sentinel, link.conn], left)
        if link.conn in ready:
            try:
                msg = link.conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg == ("ready",):
                return
            if msg is not None:
                link._stash.append(msg)
                continue
        if proc.sentinel in ready or link.conn in ready:
            proc.join(1.0)
            raise StartFailed(f"exited before it was ready ({describe_exit(proc.exitcode)})")


def _log_event(event: Event, child: _Child | None, reason: str | None) -> None:
    who = f"{event.supervisor}: child {event.child_id!r} (pid {event.pid})"
    if event.kind == "started":
        log.info("%s started", who)
    elif event.kind == "exited":
        level = logging.INFO if event.exitcode == 0 else logging.WARNING
        log.log(level, "%s exited: %s", who, event.reason)
    elif event.kind == "terminated":
        log.info("%s terminated: %s", who, event.reason)
    elif event.kind == "restarting":
        log.warning("%s: restarting child %r (%s, restart=%s, restarts=%d)", event.supervisor,
                    event.child_id, reason,
                    child.spec.restart if child else "?", child.restarts if child else 0)
    elif event.kind == "start_failed":
        log.error("%s failed to start: %s", who, event.reason)
    elif event.kind == "intensity_exceeded":
        log.error("%s: restart intensity exceeded", event.supervisor)
    elif event.kind == "shutdown":
        log.info("%s: shutting down", event.supervisor)
