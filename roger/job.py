"""`roger.Job`: the base class of every job.

A subclass is two things at once. As a class it describes a kind of work
(its hooks and class attributes) and registers itself by name so workers can
find it. Its instances are job *records*: the data of one queued job, with
the fields below. Inside `perform`, `self` is that record.

Record fields: `id`, `args`, `queue_key`, `execution_key` (the values the
hooks returned at `create`; on a record they hide the hook methods of the
same name), `retry_count`, `queued_at`, `due_at` (a delayed job's due
time), `started_at` (ms since the epoch, or None), `max_execution_time`,
`redelivered`, `partition` and `queue`.

The class namespace is kept for users: the machinery lives in other modules
(`roger.message`, `roger.producer`), so a subclass may use any attribute name
except the hooks, the fields above and `create`/`enqueue`/`name`.
"""

from __future__ import annotations

import secrets
from typing import Any, Self

from roger import producer, registry
from roger.errors import UnknownJob
from roger.message import normalize_args
from roger.record import Record, check_execution_key, check_id

__all__ = ["Job", "UnregisteredJob"]

_MISSING: Any = object()


class Job(Record):
    """Base class of jobs: subclass it and implement `perform(self, args)`.

    Class attributes:

    - `name`: the name the class is registered and addressed under on the
      wire; defaults to ``"module:QualName"``. Set it explicitly to keep
      queued jobs runnable when you move or rename the class. In a script
      run as ``__main__``, the module is the name the script is importable
      as (``python -m pkg.mod``: ``pkg.mod``; ``python jobs.py``: ``jobs``);
      when it has none (``python -c``, a notebook), `enqueue` refuses the
      job until `name` is set.
    - `retryable`: retry with backoff when `perform` raises (default False).
    - `max_execution_time`: seconds after which a running job is killed and
      settled as a timeout; None (the default) means unlimited.

    Pass ``register=False`` in the class statement for an abstract base
    (``class Base(roger.Job, register=False)``): it is not addressable.
    """

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("retryable", False), bool):
            raise TypeError(f"{cls.__qualname__}.retryable must be True or False")
        limit = cls.__dict__.get("max_execution_time")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0
        ):
            raise TypeError(
                f"{cls.__qualname__}.max_execution_time must be a number of seconds > 0 "
                f"or None, got {limit!r}"
            )
        # Only a name written in this very class statement counts: a subclass
        # must not inherit (and clash with) its parent's registered name.
        name = cls.__dict__.get("name") or registry.default_name(cls)
        cls.name = name
        if register:
            registry.register(name, cls)

    def __init__(self) -> None:
        raise TypeError(
            f"job records are made with {type(self).__qualname__}.create(args), "
            "not by calling the class"
        )

    @classmethod
    def create(cls, job_class_or_args: Any = _MISSING, /, args: Any = _MISSING, *,
               id: str | None = None) -> Self:
        """Make a new record of this job, ready to `enqueue`.

        ``SendInvoice.create(args)`` and ``roger.Job.create(SendInvoice, args)``
        are the same. `args` must be JSON values (checked here, with a
        `TypeError` naming the offending value); the record holds a copy, so
        later changes to the caller's object do not leak into the job. The
        `queue_key` and `execution_key` hooks run now, on that copy; an
        execution key longer than its waiting queue's name allows (136 bytes)
        raises `ValueError`.

        `id` is the record's id, random (32 hex digits) by default. A caller
        may choose it, e.g. ``id="invoice-7"``, to make enqueues idempotent:
        1-128 characters of ``[A-Za-z0-9_.:-]``, else `ValueError` (`TypeError`
        when it is not a string).
        """
        if args is _MISSING:
            if job_class_or_args is _MISSING:
                raise TypeError(f"{cls.__qualname__}.create() missing its args")
            job_class, args = cls, job_class_or_args
        elif job_class_or_args is _MISSING:
            job_class = cls
        else:
            job_class = job_class_or_args
            if not (isinstance(job_class, type) and issubclass(job_class, cls)):
                raise TypeError(
                    f"{cls.__qualname__}.create(job_class, args): {job_class!r} is not a "
                    f"subclass of {cls.__qualname__}"
                )
        job = _new_record(job_class, args, secrets.token_hex(16) if id is None else check_id(id))
        # What its enqueues cost (see roger.producer.twin_marks): a random id's
        # first copy is the only one that cannot have a twin.
        job.__dict__["_twin_id"] = "new" if id is None else "chosen"
        return job

    def enqueue(self, partition: str, queue: str | None = None, *, delay: Any = None,
                at: Any = None) -> Self:
        """Publish this job to `partition` and return once RabbitMQ confirmed it.

        `queue` defaults to ``self.queue_type(self.args)``. Raises
        `roger.DuplicateJob` when another job with the same `queue_key` is
        queued or running, `roger.BrokerError` when the broker did not confirm,
        `TypeError` when no worker could resolve the class's name (a class of a
        script run as ``__main__`` that cannot be imported: set `name`).
        Returns the record, now with `partition`, `queue` and `queued_at` set.

        Delayed: `delay` is seconds (int or float >= 0) or a `timedelta`, `at`
        a timezone-aware `datetime` or epoch seconds (in the past: runs now).
        The job waits in RabbitMQ and runs no earlier than then, to the
        second; `due_at` (ms since the epoch) says when. It holds its
        `queue_key` while it waits and can be cancelled (`roger.cancel`).

        >>> SendInvoice.create({"id": 7}).enqueue("myapp", delay=600)  # doctest: +SKIP
        """
        producer.enqueue_many([self], partition, queue, delay=delay, at=at)
        return self

    def queue_type(self, args: Any) -> str:
        """The queue of the partition this job goes to by default."""
        return "default"

    def queue_key(self, args: Any) -> str | None:
        """A key unique while queued or running (a second enqueue fails), or None."""
        return None

    def execution_key(self, args: Any) -> str | None:
        """A key that runs one job at a time across the cluster, or None."""
        return None

    def perform(self, args: Any) -> Any:
        """Do the work. Runs in a worker process; `self` is the job record."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement perform()")

    def __repr__(self) -> str:
        fields = self.__dict__
        where = (
            f" partition={fields['partition']!r} queue={fields['queue']!r}"
            if fields.get("partition") is not None
            else " (not enqueued)"
        )
        return (
            f"<{type(self).__qualname__} {self.name!r} id={fields.get('id')!r}"
            f"{where} retry_count={fields.get('retry_count')}>"
        )


class UnregisteredJob(Job, register=False):
    """Stands in for a record whose job class is not registered here.

    Listings (`roger.info`) use it so that buried or queued jobs of classes
    this process never imported can still be inspected; its `name` is the
    wire name. It cannot be performed.
    """

    def perform(self, args: Any) -> Any:
        raise UnknownJob(self.name)


def _new_record(job_class: type[Job], args: Any, job_id: str) -> Any:
    try:
        registered = registry.resolve(getattr(job_class, "name", "")) is job_class
    except UnknownJob:
        registered = False
    if not registered:
        raise TypeError(
            f"{job_class.__qualname__} is not a registered job class (the Job base, or "
            "declared with register=False): create records of a concrete subclass, "
            "e.g. SendInvoice.create(args)"
        )
    try:
        args = normalize_args(args)
    except TypeError as exc:
        raise TypeError(f"{job_class.__qualname__}.create(): {exc}") from None
    job = job_class.new(id=job_id, args=args, retry_count=0,
                        max_execution_time=job_class.max_execution_time, redelivered=False)
    fields = job.__dict__
    # On a record the fields hide the hooks of the same name: call via the class.
    fields["queue_key"] = _key(job_class, "queue_key", job_class.queue_key(job, args))
    execution_key = _key(job_class, "execution_key", job_class.execution_key(job, args))
    if execution_key is not None:
        try:
            check_execution_key(execution_key)
        except ValueError as exc:
            raise ValueError(f"{job_class.__qualname__}.execution_key(): {exc}") from None
    fields["execution_key"] = execution_key
    return job


def _key(job_class: type[Job], hook: str, value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise TypeError(
        f"{job_class.__qualname__}.{hook}() must return a string or None, got {value!r}"
    )
