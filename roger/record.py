"""`Record`: the data of one job, the type every layer below `roger.Job` handles.

`roger.Job` subclasses `Record` and adds what a user writes (the hooks,
`create`, `enqueue`). The codec, the registry, the producer, the consumer
and the worker only need the data, so they type against this leaf module
and never import `roger.job`.

A record's fields, in one place: `FIELDS` are what every record has;
`WIRE_FIELDS` are the ones a message body carries (with ``v`` and
``name``; see `roger.message`). `started_at` is set by the worker that
runs the job; `redelivered`, `partition` and `queue` by the consumer that
received it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

__all__ = ["FIELDS", "WIRE_FIELDS", "Record"]

WIRE_FIELDS = ("id", "args", "queue_key", "execution_key", "retry_count", "queued_at",
               "max_execution_time")
FIELDS = (*WIRE_FIELDS, "started_at", "redelivered", "partition", "queue")


class Record:
    """One job's data. Instances are made by `new`, never by calling the class.

    The fields live in the instance ``__dict__``: on a `roger.Job` record
    they hide the hook methods of the same name (`queue_key`,
    `execution_key`), which is why the hooks are called through the class.
    """

    name: ClassVar[str]
    retryable: ClassVar[bool] = False
    max_execution_time: float | None = None

    # The instance fields (see FIELDS), declared for readers and type checkers.
    id: str
    args: Any
    retry_count: int
    queued_at: int | None
    started_at: int | None
    redelivered: bool
    partition: str | None
    queue: str | None

    @classmethod
    def new(cls, **fields: Any) -> Self:
        """A record of this class with `fields`; the fields not given are None.

        >>> Record.new(id="7", args={}).retry_count is None
        True
        """
        record = object.__new__(cls)
        values = dict.fromkeys(FIELDS)
        values.update(fields)
        record.__dict__.update(values)
        return record

    def perform(self, args: Any) -> Any:
        """Do the work (see `roger.Job.perform`)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement perform()")
