"""The worker process: runs jobs one at a time, and nothing else.

A worker talks only to its consumer, over a private frame pipe (`roger.pipe`:
raw bytes, no object serialisation, no broker connection): it receives a job
frame, runs the job with the callbacks around it, and answers with an outcome
frame. Everything that can go wrong inside `perform` (any `BaseException`,
`SystemExit` included) becomes an error outcome; a worker that dies instead
(os._exit, a signal, a segfault) is noticed by the consumer through its sentinel.

Frames, consumer -> worker: ``struct("!QB")`` (delivery tag, redelivered)
then the message body. Worker -> consumer: ``b"D" + tag`` when done, or
``b"E" + tag + JSON`` ({"disposition", "error", "traceback"}) on error,
where the disposition is ``retry``, ``bury`` or ``failed`` (not retryable; see
`roger.partition.policy`).
The kind byte is lower case (``d``, ``e``) on a worker's last job before it
recycles itself, so that the pool does not hand it another.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import time
import traceback
from typing import Any

from roger import message, registry
from roger.callbacks import Callbacks
from roger.partition.policy import decide, fire
from roger.record import Record
from roger.settings import Settings

log = logging.getLogger("roger.worker")

JOB_HEADER = struct.Struct("!QB")
TAG = struct.Struct("!Q")
DONE = b"D"
ERROR = b"E"


def encode_job(tag: int, redelivered: bool, body: bytes) -> bytes:
    return JOB_HEADER.pack(tag, redelivered) + body


def decode_outcome(frame: bytes) -> tuple[int, dict | None, bool]:
    """(delivery tag, None when done or the error details, whether the worker exits now)."""
    tag = TAG.unpack_from(frame, 1)[0]
    kind = frame[:1]
    last = kind.islower()
    if kind.upper() == DONE:
        return tag, None, last
    return tag, json.loads(frame[1 + TAG.size:]), last


def run_worker(partition: str, queue: str, settings: Settings, conn: Any, inherited: list[Any],
               max_jobs: int | None = None) -> None:
    """Worker process main: serve jobs from `conn` until EOF or `max_jobs` jobs.

    `inherited` are the consumer's sockets and pipes this fork copied; closing
    them here keeps the broker connection and sibling pipes the consumer's own.
    """
    for obj in inherited:
        try:
            obj.close()
        except Exception:
            pass
    # The consumer decides when a worker stops; Ctrl-C and a stray SIGTERM to
    # the process group must not interrupt a job half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    registry.import_modules(settings.imports)
    callbacks = Callbacks.load(settings.callbacks)
    done = 0
    while max_jobs is None or done < max_jobs:
        try:
            frame = conn.recv()
        except (EOFError, OSError):
            return
        tag, redelivered = JOB_HEADER.unpack_from(frame)
        outcome = run_job(partition, queue, frame[JOB_HEADER.size:], tag, bool(redelivered),
                          callbacks, settings.retry_levels)
        done += 1
        if max_jobs is not None and done >= max_jobs:
            outcome = outcome[:1].lower() + outcome[1:]
        conn.send(outcome)
    log.debug("[%s/%s] worker %d recycled after %d jobs", partition, queue, os.getpid(), done)


def run_job(partition: str, queue: str, body: bytes, tag: int, redelivered: bool,
            callbacks: Callbacks, retry_levels: list[int]) -> bytes:
    """Decode one job's message body, run it with its callbacks; return its outcome frame.

    `roger.testing.inline` runs jobs through here too, in the calling process.
    """
    job = message.decode(body, "application/json")
    job.partition, job.queue, job.redelivered = partition, queue, redelivered
    job.started_at = int(time.time() * 1000)
    return _execute(partition, queue, job, tag, callbacks, retry_levels)


def _execute(partition: str, queue: str, job: Record, tag: int, callbacks: Callbacks,
             retry_levels: list[float]) -> bytes:
    state = callbacks.call("before_run", partition, job)
    try:
        result = job.perform(job.args)
    except BaseException as error:  # noqa: B036 - a job's SystemExit is the job's error
        tb = traceback.format_exc()
        decision = decide(job, "error", retry_levels)
        fire(callbacks, decision, partition, job, error=error, traceback=tb, state=state)
        log.log(logging.WARNING if decision.disposition == "retry" else logging.ERROR,
                "[%s/%s] job %s (%s) failed: %r; %s", partition, queue, job.id, job.name,
                error, decision.disposition)
        detail = {"disposition": decision.disposition, "error": _describe(error),
                  "traceback": tb}
        return ERROR + TAG.pack(tag) + json.dumps(detail).encode()
    fire(callbacks, decide(job, "done", retry_levels), partition, job, result=result,
         state=state)
    return DONE + TAG.pack(tag)


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:2000] + "..."
