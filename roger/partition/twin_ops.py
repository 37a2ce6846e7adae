"""The coordinator's twin-lock requests (see `roger.partition.twin_locks` for the rules).

A mixin of `roger.partition.coordinator.CoordinatorCore`: it works on the
core's state, saves it through the core and answers on its channels.

- ``twins`` (a producer's persistent notice, sent and confirmed before
  it publishes the copies): register ids, broadcast them;

  How many consumers must answer: every consumer process of the partition
  consumes its roll-call queue (`roger.amqp.topology.declare_links`)
  before it fetches the state; the count is taken here, before the
  broadcast. Each registration has a number (`seq`); a consumer answers
  only the broadcasts numbered above the state it fetched. So every
  consumer that answers was counted, and every counted one that lives
  hears the broadcast and answers (after its claim, on the same channel);
  one that died never answers, and the grace runs out instead;
- ``twin_seen`` (a consumer's transient notice): it heard the broadcast
  of registered ids, and claimed what it holds of them;
- ``twin_acquire`` (a consumer's call): answered at once when the lock
  is free, else when it comes to the caller (the reply is deferred: the
  waiter, with its reply address, is part of the saved state, so a
  coordinator that takes over answers it);
- ``twin_release`` (a consumer's persistent notice): the holder settled,
  or a waiter left; the next waiter gets the lock;
- ``twin_renew`` (a consumer's transient notice, once per heartbeat while
  it holds locks): its holders are alive.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import amqp

from roger.amqp import topology
from roger.partition.state import CANCELLED_TTL, DUE_SLACK, State
from roger.partition.twin_locks import Grant, grace, lease

__all__ = ["TwinOps"]

log = logging.getLogger("roger.global")


class TwinOps:
    """Twin-lock requests of a coordinator core (the attributes below are the core's)."""

    partition: str
    state: State
    settings: Any
    channels: Any
    active: bool
    reply_address: tuple[str, str] | None  # (reply_to, correlation id) of the current request

    def _save(self) -> None: ...
    def _broadcast(self, event: dict) -> None: ...

    def _lease(self) -> float:
        return lease(self.settings.heartbeat)

    def op_twins(self, request: dict) -> dict:
        now = time.time()
        ids = [str(job_id) for job_id in request["ids"]]
        forget = max(now + CANCELLED_TTL, self.state.last_due() + DUE_SLACK)
        hold = grace(self.settings.heartbeat, self.settings.confirm_timeout)
        consumers = topology.declare_links(self.channels.publish, self.partition)
        twins = self.state.twins
        twins.seq += 1
        grants = []
        for job_id in ids:
            grants += twins.register(job_id, now, hold, self._lease(), forget, consumers)
        self._save()
        self._answer(grants)
        self._broadcast({"type": "twins", "ids": ids, "until": forget, "seq": twins.seq})
        log.info("[%s] jobs %s enqueued again: their running copies take the twin lock",
                 self.partition, ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
        return {"ok": True}

    def op_twin_acquire(self, request: dict) -> dict | None:
        now = time.time()
        self._expire_twins(now)
        job_id, token = request["job_id"], request["token"]
        wait = self.reply_address if request.get("wait") else None
        if self.state.twins.acquire(job_id, token, now, self._lease(),
                                    claim=bool(request.get("claim")), wait=wait):
            self._save()
            return {"ok": True}
        if wait is None:
            return {"ok": False}
        self._save()
        return None  # answered when the lock comes to it (see `_answer`)

    def op_twin_release(self, request: dict) -> dict:
        now = time.time()
        lock = self.state.twins.locks.get(request["job_id"])
        left_line = lock is not None and lock["holder"] != request["token"]
        grants = self.state.twins.release(request["job_id"], request["token"], now,
                                          self._lease())
        if left_line or grants:
            self._save()  # before the answer: the state must say who holds it now
            self._answer(grants)
        # A lock freed with nobody waiting is not saved now (the next change
        # saves it): a coordinator that takes over from an older save finds
        # it held by a holder that no longer renews it, and frees it one
        # lease later. It costs a later twin that wait, never an overlap.
        return {"ok": True}

    def op_twin_seen(self, request: dict) -> dict:
        grants = self.state.twins.seen([str(j) for j in request["ids"]],
                                       str(request["consumer"]), time.time(), self._lease())
        if grants:  # else not saved: a takeover counts nothing and waits out the grace
            self._save()
            self._answer(grants)
        return {"ok": True}

    def op_twin_renew(self, request: dict) -> dict:
        # Not saved: a coordinator that takes over renews every lock it loads.
        self.state.twins.renew([(j, t) for j, t in request["pairs"]], time.time(),
                               self._lease())
        return {"ok": True}

    def twins_loaded(self, now: float) -> None:
        """Just activated: holders renewed to the last coordinator, not to us; count anew."""
        self.state.twins.renew([(j, lock["holder"]) for j, lock in self.state.twins.locks.items()],
                               now, self._lease())

    def twins_wake_in(self) -> float | None:
        """Seconds until the next twin lock runs out (None: none is held, or not active)."""
        when = self.state.twins.next_expiry() if self.active else None
        return None if when is None else max(0.0, when - time.time())

    def twins_turn(self) -> None:
        if self.active:
            self._expire_twins(time.time())

    def _expire_twins(self, now: float) -> None:
        when = self.state.twins.next_expiry()
        if when is None or when > now:
            return
        grants, expired = self.state.twins.expire(now, self._lease())
        for job_id, holder in expired:
            if holder:
                log.warning("[%s] twin lock of job %s freed: its holder %s stopped renewing it "
                            "(dead or cut off)", self.partition, job_id, holder)
        self._save()
        self._answer(grants)

    def _answer(self, grants: list[Grant]) -> None:
        """Tell each waiter that got a lock (after the save: the state says it holds it)."""
        for grant in grants:
            log.info("[%s] twin lock of job %s handed to %s", self.partition, grant.job_id,
                     grant.token)
            self.channels.publish.basic_publish(
                amqp.Message(json.dumps({"ok": True}), content_type="application/json",
                             correlation_id=grant.corr),
                exchange="", routing_key=grant.reply_to)
