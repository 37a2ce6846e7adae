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

`check_id` and `check_execution_key` are the rules a new record's fields
obey beyond their types (`roger.Job.create` applies them).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Self

__all__ = ["FIELDS", "MAX_EXECUTION_KEY_BYTES", "WIRE_FIELDS", "Record", "check_execution_key",
           "check_id"]

WIRE_FIELDS = ("id", "args", "queue_key", "execution_key", "retry_count", "queued_at",
               "max_execution_time")
# `due_at` is on the wire too, but only on delayed jobs (see `roger.message`).
FIELDS = (*WIRE_FIELDS, "due_at", "started_at", "redelivered", "partition", "queue")

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# An execution key names the queue its jobs wait in,
# "<partition>-execution-waiting-<key>". RabbitMQ caps a queue name at 255
# bytes and a partition name has at most 100 characters (see
# `roger.settings.check_partition_name`), so a key that fits here fits in
# every partition: a job that can be created can be enqueued anywhere.
MAX_EXECUTION_KEY_BYTES = 255 - 100 - len("-execution-waiting-")


def check_id(job_id: Any) -> str:
    """Return `job_id` if it can be a caller-chosen job id, else raise.

    An id is 1-128 characters of ``[A-Za-z0-9_.:-]``: `TypeError` when it is
    not a string, `ValueError` when it is a string that breaks that rule.

    >>> check_id("invoice-7")
    'invoice-7'
    """
    if type(job_id) is not str:
        raise TypeError(f"a job id must be a string, got {job_id!r}")
    if not _ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id[:140]!r}: use 1-128 letters, digits, "
                         "'_', '.', ':' or '-'")
    return job_id


def check_execution_key(key: str) -> str:
    """Return `key` if it fits in its waiting queue's name, else raise `ValueError`."""
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise ValueError(f"execution key {key[:40]!r} is not valid Unicode text") from None
    if size > MAX_EXECUTION_KEY_BYTES:
        shown = f"{key[:40]!r}{'...' if len(key) > 40 else ''}"
        raise ValueError(
            f"execution key {shown} is {size} bytes in UTF-8; at most "
            f"{MAX_EXECUTION_KEY_BYTES} fit in the name of its waiting queue "
            "(<partition>-execution-waiting-<key>, 255 bytes at most)")
    return key


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
    due_at: int | None
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
