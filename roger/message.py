"""The JSON wire codec: job records to message bodies and back.

A message body is one JSON object::

    {"v": 1, "id": "...", "name": "billing:SendInvoice", "args": {...},
     "queue_key": null, "execution_key": null, "retry_count": 0,
     "queued_at": 1700000000000, "max_execution_time": null}

plus ``"due_at": <ms since the epoch>`` on a delayed job (absent otherwise,
so bodies of plain jobs are unchanged and older readers ignore it), with
content type ``application/json``. `started_at` is not on the wire: it
is set by the worker that runs the job. JSON only, never an object
serialisation format: a message must not be able to run code in the
process that reads it.

This module is on the hot path of every job, so `decode` validates with
plain type checks rather than a schema library.
"""

from __future__ import annotations

import json
import math
from typing import Any

from roger import registry
from roger.errors import BadMessage
from roger.record import WIRE_FIELDS, Record

__all__ = ["CONTENT_TYPE", "VERSION", "decode", "encode", "normalize_args", "queue_key_of"]

CONTENT_TYPE = "application/json"
VERSION = 1

# ensure_ascii (the default) keeps every body encodable, even strings holding
# lone surrogates, at the cost of escaping non-ASCII text.
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode


def encode(job: Record) -> bytes:
    """Serialise a job record to a message body."""
    fields = job.__dict__
    wire = {"v": VERSION, "id": fields["id"], "name": job.name}
    for name in WIRE_FIELDS[1:]:
        wire[name] = fields[name]
    if fields.get("due_at") is not None:
        wire["due_at"] = fields["due_at"]
    try:
        return _encode_json(wire).encode()
    except (TypeError, ValueError):
        # args were checked at create(); someone mutated them since. Say where.
        normalize_args(fields["args"])
        raise


def decode(
    body: bytes | str,
    content_type: str | None,
    *,
    partition: str | None = None,
    queue: str | None = None,
    redelivered: bool = False,
    max_bytes: int | None = None,
    fallback: type[Record] | None = None,
) -> Record:
    """Turn a message body into an instance of its registered job class.

    `partition`, `queue` and `redelivered` are copied onto the record as the
    consumer knows them. Raises `BadMessage` whose `reason` is one of
    ``"wrong_content_type"``, ``"too_large"`` (over `max_bytes`),
    ``"undecodable"`` (not UTF-8 JSON), ``"invalid_fields"`` or, as
    `UnknownJob`, ``"unknown_job"``. With `fallback`, a job name that is not
    registered yields an instance of that class (its `name` set to the wire
    name) instead: for listings, never for running jobs.
    """
    if content_type != CONTENT_TYPE and _media_type(content_type) != CONTENT_TYPE:
        raise BadMessage(
            "wrong_content_type", f"expected {CONTENT_TYPE}, got {content_type!r}"
        )
    if max_bytes is not None and len(body) > max_bytes:
        raise BadMessage("too_large", f"{len(body)} bytes, the limit is {max_bytes}")
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8")
        obj = _decode_json(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadMessage("undecodable", str(exc)) from None
    if type(obj) is not dict:
        raise BadMessage("invalid_fields", f"expected a JSON object, got {_json_kind(obj)}")
    try:
        version = obj["v"]
        job_id = obj["id"]
        name = obj["name"]
        args = obj["args"]
        queue_key = obj["queue_key"]
        execution_key = obj["execution_key"]
        retry_count = obj["retry_count"]
        queued_at = obj["queued_at"]
        max_execution_time = obj["max_execution_time"]
        due_at = obj.get("due_at")
    except KeyError as exc:
        raise BadMessage("invalid_fields", f"missing field {exc.args[0]!r}") from None
    if type(version) is not int or version != VERSION:
        _invalid("v", version, f"the number {VERSION}")
    if type(job_id) is not str or not job_id:
        _invalid("id", job_id, "a non-empty string")
    if type(name) is not str or not name:
        _invalid("name", name, "a non-empty string")
    if queue_key is not None and type(queue_key) is not str:
        _invalid("queue_key", queue_key, "a string or null")
    if execution_key is not None and type(execution_key) is not str:
        _invalid("execution_key", execution_key, "a string or null")
    if type(retry_count) is not int or retry_count < 0:
        _invalid("retry_count", retry_count, "an integer >= 0")
    if type(queued_at) is not int or queued_at < 0:
        _invalid("queued_at", queued_at, "an integer >= 0 (ms since the epoch)")
    if due_at is not None and (type(due_at) is not int or due_at < 0):
        _invalid("due_at", due_at, "an integer >= 0 (ms since the epoch) or absent")
    if max_execution_time is not None and (
        type(max_execution_time) not in (int, float) or not max_execution_time > 0
    ):
        _invalid("max_execution_time", max_execution_time, "a number > 0 or null")

    try:
        cls = registry.resolve(name)
    except BadMessage:
        if fallback is None:
            raise
        cls = fallback
    job = cls.new(
        id=job_id,
        args=args,
        queue_key=queue_key,
        execution_key=execution_key,
        retry_count=retry_count,
        queued_at=queued_at,
        due_at=due_at,
        max_execution_time=max_execution_time,
        redelivered=redelivered,
        partition=partition,
        queue=queue,
    )
    if cls is fallback:
        job.__dict__["name"] = name
    return job


def queue_key_of(body: bytes | str) -> tuple[str, str] | None:
    """The ``(queue_key, id)`` a message body names, or None.

    Lenient, for messages that are not (or are no longer to be) jobs: one
    moved to ``.rejected``, or purged, still frees the key it was enqueued
    with. Only these two fields are read; the rest may be anything.
    """
    try:
        obj = _decode_json(body if isinstance(body, str) else bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    key, job_id = obj.get("queue_key"), obj.get("id")
    if type(key) is str and type(job_id) is str and job_id:
        return key, job_id
    return None


def normalize_args(args: Any) -> Any:
    """Return a JSON-equivalent deep copy of `args`, or raise `TypeError`.

    The copy is what every worker will see: tuples become lists, str/int/
    float subclasses (enums) become their plain values. Anything JSON cannot
    carry faithfully is refused, with the path to it in the message: other
    types, non-string dict keys (JSON would silently turn them into strings),
    NaN and infinities, and circular references.
    """
    try:
        return _normalize(args, set())
    except _Unserialisable as exc:
        path = "args" + "".join(reversed(exc.path))
        raise TypeError(
            f"{path} {exc.problem}; job args must be JSON values "
            "(dict with str keys, list, str, int, float, bool, None)"
        ) from None
    except RecursionError:
        raise TypeError("args are nested too deeply to be sent as JSON") from None


class _Unserialisable(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []  # innermost first, built while unwinding


def _normalize(value: Any, active: set[int]) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise _Unserialisable(f"is {value!r}, which JSON cannot represent")
    if isinstance(value, (dict, list, tuple)):
        marker = id(value)
        if marker in active:
            raise _Unserialisable("is a circular reference")
        active.add(marker)
        try:
            if isinstance(value, dict):
                return _normalize_dict(value, active)
            return _normalize_list(value, active)
        finally:
            active.discard(marker)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _normalize(float(value), active)
    raise _Unserialisable(f"is a {_type_name(value)} ({_short_repr(value)}), not a JSON value")


def _normalize_dict(value: dict[Any, Any], active: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _Unserialisable(
                    f"has the key {_short_repr(key)} of type {_type_name(key)}; "
                    "JSON object keys must be strings"
                )
            key = str.__str__(key)
        try:
            out[key] = _normalize(item, active)
        except _Unserialisable as exc:
            exc.path.append(f"[{key!r}]")
            raise
    return out


def _normalize_list(value: list[Any] | tuple[Any, ...], active: set[int]) -> list[Any]:
    out: list[Any] = []
    for index, item in enumerate(value):
        try:
            out.append(_normalize(item, active))
        except _Unserialisable as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _invalid(field: str, value: Any, expected: str) -> None:
    raise BadMessage(
        "invalid_fields", f"field {field!r} must be {expected}, got {_short_repr(value)}"
    )


def _media_type(content_type: str | None) -> str | None:
    # Accept parameters ("application/json; charset=utf-8") and any case.
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
