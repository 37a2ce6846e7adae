"""The parent-child channel: calls with replies, casts, and events upward.

Every supervised child gets one duplex pipe to its supervisor. On it:

- parent to child: ``("call", req_id, payload)`` wants a reply,
  ``("cast", payload)`` does not;
- child to parent: ``("reply", req_id, ok, value)``, ``("event", payload)``
  (reported to the supervisor's ``on_event`` as a ``message`` event),
  ``("ready",)`` (the start handshake), and ``("call", req_id, payload)``:
  a child may call its supervisor too (`parent().call(payload)`), which
  answers as it answers calls from above (its operations, then its handler).

The payloads travel over a local pipe between processes of one tree, so
they may be any picklable object; nothing here goes on a network.

Inside a child, `parent()` is its link to its supervisor:

    link = supervision.parent()
    msg = link.recv(timeout=1.0)
    if msg and msg[0] == "call":
        link.answer(msg, lambda payload: payload * 2)
"""

from __future__ import annotations

import itertools
import pickle
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import CallFailed, CallTimeout, SupervisionError, SupervisorGone


class Link:
    """One end of a parent-child channel (a `multiprocess` Connection)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._ids = itertools.count(1)
        self._stash: deque[tuple] = deque()

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        self.conn.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def send(self, msg: tuple) -> None:
        try:
            self.conn.send(msg)
        except (OSError, EOFError, ValueError) as e:  # ValueError: closed handle
            raise SupervisorGone(f"the other end of the link is gone: {e}") from None

    def cast(self, payload: Any) -> None:
        """Send a message that wants no reply."""
        self.send(("cast", payload))

    def event(self, payload: Any) -> None:
        """Report something upward to the supervisor (its ``on_event``)."""
        self.send(("event", payload))

    def ready(self) -> None:
        """Tell the supervisor this child finished starting."""
        self.send(("ready",))

    def reply(self, req_id: int, ok: bool, value: Any) -> None:
        if not ok and not _picklable(value):
            value = CallFailed(f"{type(value).__name__}: {value}")
        self.send(("reply", req_id, ok, value))

    def answer(self, msg: tuple, fn: Callable[[Any], Any]) -> None:
        """Run `fn(payload)` for a call message and reply with its result or error."""
        _, req_id, payload = msg
        try:
            value, ok = fn(payload), True
        except Exception as e:  # the caller gets the error, the child lives on
            value, ok = e, False
        self.reply(req_id, ok, value)

    def pending(self) -> bool:
        """True when a message is waiting (stashed or in the pipe)."""
        return bool(self._stash) or self.conn.poll()

    def recv(self, timeout: float | None = None) -> tuple | None:
        """The next message, or None after `timeout` seconds (None: wait)."""
        if self._stash:
            return self._stash.popleft()
        try:
            if timeout is not None and not self.conn.poll(timeout):
                return None
            return self.conn.recv()
        except (OSError, EOFError) as e:
            raise SupervisorGone(f"the other end of the link is gone: {e}") from None

    def call(self, payload: Any, timeout: float | None = 30.0) -> Any:
        """Send a call and wait for its reply; other messages are kept for `recv`.

        Raises `CallTimeout` after `timeout` seconds, `SupervisorGone` if the
        other end goes away, and the callee's own exception if it raised.
        """
        req_id = next(self._ids)
        self.send(("call", req_id, payload))
        deadline = None if timeout is None else time.monotonic() + timeout
        kept: list[tuple] = []
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    if left is not None and not self.conn.poll(left):
                        raise CallTimeout(f"no reply to {_describe(payload)} within {timeout} s")
                    msg = self.conn.recv()
                except CallTimeout:  # a TimeoutError, hence an OSError: not "gone"
                    raise
                except (OSError, EOFError):
                    raise SupervisorGone(
                        f"gone before replying to {_describe(payload)}"
                    ) from None
                if msg[0] == "reply" and msg[1] == req_id:
                    if msg[2]:
                        return msg[3]
                    raise msg[3]
                if msg[0] != "reply":  # a stale reply of a timed-out call is dropped
                    kept.append(msg)
        finally:
            self._stash.extend(kept)


def _describe(payload: Any) -> str:
    if isinstance(payload, tuple) and payload and isinstance(payload[0], str):
        return repr(payload[0])
    return type(payload).__name__


def _picklable(value: Any) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


_parent: Link | None = None


def parent() -> Link:
    """This process's link to its supervisor."""
    if _parent is None:
        raise SupervisionError("this process is not a supervised child")
    return _parent


def is_supervised() -> bool:
    return _parent is not None


def ready() -> None:
    """Report that this child finished starting (a no-op when not supervised).

    Children whose spec has ``notify_ready=True`` must call this; their
    supervisor waits for it (up to the spec's ``start_timeout``) before it
    starts the next child or answers the caller of ``start_child``.
    """
    if _parent is not None:
        _parent.ready()


def _set_parent(link: Link | None) -> None:
    global _parent
    _parent = link
