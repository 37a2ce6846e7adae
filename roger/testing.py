"""Testing mode: jobs run in the calling process, or are only recorded, with no broker.

`inline()` makes `Job.enqueue` and `roger.enqueue_many` run each job at once,
in the calling process, on the path a node takes: the checks and the JSON
body of `roger.producer`, the queue key claimed as a partition's coordinator
claims it (`roger.partition.state.State`), then the worker's own code
(`roger.partition.worker.run_job`: decode, `before_run`, `perform`, the
settle policy of `roger.partition.policy` and its callbacks, from the
`callbacks` setting). A retry runs again at once, until the last of
`retry_levels`; then the job is buried. The key is released when the job
settles. `capture()` records the jobs without running them; their keys stay
taken, as they would while the jobs wait in their queue.

Not in testing mode: `max_execution_time` (nothing kills the calling
process), execution keys (jobs run one at a time anyway), cancellation and
pauses. The pytest fixtures are in `roger.pytest_plugin`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import TypeVar

from roger import message, producer
from roger.callbacks import Callbacks
from roger.partition import coordination, policy, worker
from roger.partition.settlement import truncate
from roger.partition.state import State
from roger.record import Record
from roger.settings import Settings

__all__ = ["Captured", "Inline", "capture", "inline"]

log = logging.getLogger("roger.testing")

_Backend = TypeVar("_Backend", bound="Captured")


class Captured:
    """The jobs enqueued while `capture()` (or `inline()`) is active."""

    def __init__(self) -> None:
        self._jobs: list[Record] = []
        # What each partition's coordinator would hold: the queue keys.
        self._states: dict[str, State] = defaultdict(State)
        self._lock = threading.Lock()

    def jobs(self, partition: str | None = None, queue: str | None = None) -> list[Record]:
        """The jobs enqueued (to `partition`, to `queue` of it), oldest first.

        Each is the record a worker would receive: decoded from the JSON body
        made for it, with `partition`, `queue` and `queued_at` set.

        >>> [job.args for job in captured.jobs("myapp")]  # doctest: +SKIP
        [{'id': 7}]
        """
        return [job for job in self._jobs
                if partition in (None, job.partition) and queue in (None, job.queue)]

    def clear(self) -> None:
        """Forget the jobs recorded so far and release their queue keys, as a purge would."""
        with self._lock:
            for job in self._jobs:
                self._release(job)
            self._jobs.clear()

    def _enqueue(self, settings: Settings, partition: str, jobs: list[Record],
                 targets: list[str]) -> None:
        self._receive(settings, partition, jobs, targets)

    def _receive(self, settings: Settings, partition: str, jobs: list[Record],
                 targets: list[str]) -> list[tuple[Record, bytes]]:
        """Encode and key-check `jobs` as the producer does; the records a consumer decodes."""
        bodies = producer.encode_jobs(settings, jobs)
        pairs = [(job.queue_key, job.id) for job in jobs if job.queue_key is not None]
        with self._lock:
            taken = self._states[partition].claim(pairs, time.time())
            if taken:
                raise coordination.duplicate_job(partition, taken)
            received = []
            for job, target, body in zip(jobs, targets, bodies, strict=True):
                job.partition, job.queue = partition, target
                record = message.decode(body, message.CONTENT_TYPE, partition=partition,
                                        queue=target)
                self._jobs.append(record)
                received.append((record, body))
        return received

    def _release(self, job: Record) -> None:
        if job.queue_key is not None and job.partition is not None:
            self._states[job.partition].release(job.queue_key, job.id)


class Inline(Captured):
    """The jobs run while `inline()` is active, and what became of them.

    `buried` holds the retryable jobs that failed at every retry level, as
    `roger.info.buried_jobs` lists them (with `buried_reason` and
    `buried_error`); `failed` the jobs that raised and are not retryable,
    with `failed_error` (``"ValueError: ..."``). Both are empty when every
    job succeeded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.buried: list[Record] = []
        self.failed: list[Record] = []
        self._callbacks: dict[str | None, Callbacks] = {}
        self._local = threading.local()

    def _enqueue(self, settings: Settings, partition: str, jobs: list[Record],
                 targets: list[str]) -> None:
        # Load them first: a bad `callbacks` setting fails the enqueue, and
        # claims no key.
        callbacks = self._load(settings.callbacks)
        received = [(settings, callbacks, job, body)
                    for job, body in self._receive(settings, partition, jobs, targets)]
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            # Enqueued by a job running in this thread: it runs after that
            # job has settled, as a worker would take it next.
            pending.extend(received)
            return
        self._local.pending = pending = deque(received)
        try:
            while pending:
                self._run(*pending.popleft())
        finally:
            del self._local.pending

    def _load(self, spec: str | None) -> Callbacks:
        if spec not in self._callbacks:
            self._callbacks[spec] = Callbacks.load(spec)
        return self._callbacks[spec]

    def _run(self, settings: Settings, callbacks: Callbacks, job: Record, body: bytes) -> None:
        while True:
            frame = worker.run_job(job.partition, job.queue, body, 0, False, callbacks,
                                   settings.retry_levels)
            error = worker.decode_outcome(frame)[1]
            if error is None or error["disposition"] != "retry":
                break
            # Republished with one more retry, as `settlement.publish_retry`
            # does, and received again; no wait.
            retried = copy.copy(job)
            retried.retry_count = job.retry_count + 1
            body = message.encode(retried)
            job = message.decode(body, message.CONTENT_TYPE, partition=job.partition,
                                 queue=job.queue)
        if error is not None:
            self._failed(job, error)
        with self._lock:
            self._release(job)

    def _failed(self, job: Record, error: dict) -> None:
        log.error("[%s/%s] job %s (%s) %s:\n%s", job.partition, job.queue, job.id, job.name,
                  "buried" if error["disposition"] == "bury" else "failed", error["traceback"])
        if error["disposition"] == "bury":
            job.buried_reason = policy.REASONS["error"]
            job.buried_error = truncate(error["error"])
            self.buried.append(job)
        else:
            job.failed_error = error["error"]
            self.failed.append(job)


@contextlib.contextmanager
def inline() -> Iterator[Inline]:
    """Run every job enqueued inside the block at once, in this process, with no broker.

    >>> with roger.testing.inline() as run:  # doctest: +SKIP
    ...     SendInvoice.create({"id": 7}).enqueue("myapp")  # returns once it settled
    >>> run.failed, run.buried  # doctest: +SKIP
    ([], [])

    A job enqueued by a running job runs right after it. Queue keys clash
    (`roger.DuplicateJob`) while their job is running or retrying.
    """
    with _diverted(Inline()) as run:
        yield run


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Record every job enqueued inside the block, without running it; no broker.

    >>> with roger.testing.capture() as captured:  # doctest: +SKIP
    ...     SendInvoice.create({"id": 7}).enqueue("myapp")
    >>> [job.args for job in captured.jobs("myapp")]  # doctest: +SKIP
    [{'id': 7}]

    The jobs still go through the producer's checks and JSON encoding, and
    their queue keys stay taken until `Captured.clear`.
    """
    with _diverted(Captured()) as captured:
        yield captured


@contextlib.contextmanager
def _diverted(backend: _Backend) -> Iterator[_Backend]:
    previous = producer.divert
    producer.divert = backend._enqueue
    try:
        yield backend
    finally:
        producer.divert = previous
