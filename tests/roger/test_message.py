"""The JSON wire codec: round trips and every way a message can be bad."""

import json

import pytest

import roger
from roger import message
from roger.errors import BadMessage, UnknownJob
from roger.job import UnregisteredJob

CT = "application/json"


class Resize(roger.Job):
    max_execution_time = 2.5

    def queue_key(self, args):
        return f"img-{args['image']}"

    def perform(self, args):
        return None


def wire(**changes):
    job = Resize.create({"image": 9, "sizes": [1, 2]})
    job.queued_at = 1_700_000_000_000
    fields = json.loads(message.encode(job))
    fields.update(changes)
    return fields


def body(fields) -> bytes:
    return json.dumps(fields).encode()


def test_encode_is_compact_json_with_exactly_the_wire_fields():
    job = Resize.create({"image": 9, "text": "héllo"})
    job.queued_at = 123
    raw = message.encode(job)

    assert isinstance(raw, bytes) and b", " not in raw and b": " not in raw
    assert json.loads(raw) == {
        "v": 1,
        "id": job.id,
        "name": Resize.name,
        "args": {"image": 9, "text": "héllo"},
        "queue_key": "img-9",
        "execution_key": None,
        "retry_count": 0,
        "queued_at": 123,
        "max_execution_time": 2.5,
    }


def test_round_trip_gives_an_instance_of_the_registered_class():
    job = Resize.create({"image": 9})
    job.queued_at = 5
    decoded = message.decode(
        message.encode(job), CT, partition="p", queue="q", redelivered=True
    )

    assert type(decoded) is Resize
    for field in ("id", "args", "queue_key", "execution_key", "retry_count", "queued_at",
                  "max_execution_time"):
        assert getattr(decoded, field) == getattr(job, field), field
    assert decoded.started_at is None
    assert (decoded.partition, decoded.queue, decoded.redelivered) == ("p", "q", True)


def test_content_type_parameters_are_accepted():
    decoded = message.decode(body(wire()), "Application/JSON; charset=utf-8")
    assert type(decoded) is Resize


@pytest.mark.parametrize("content_type", [None, "application/x-python-serialize", "text/plain"])
def test_wrong_content_type(content_type):
    with pytest.raises(BadMessage) as caught:
        message.decode(body(wire()), content_type)
    assert caught.value.reason == "wrong_content_type"


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe not utf-8", b"{not json", b'{"v": 1} trailing', b"", b'{"v": NaN}'],
)
def test_undecodable(raw):
    with pytest.raises(BadMessage) as caught:
        message.decode(raw, CT)
    assert caught.value.reason == "undecodable"


def test_too_large():
    with pytest.raises(BadMessage) as caught:
        message.decode(body(wire()), CT, max_bytes=10)
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[1, 2]", "JSON object"),
        (b'"job"', "JSON object"),
        (body({k: v for k, v in wire().items() if k != "args"}), "'args'"),
        (body(wire(v=2)), "'v'"),
        (body(wire(v="1")), "'v'"),
        (body(wire(id="")), "'id'"),
        (body(wire(id=7)), "'id'"),
        (body(wire(name=None)), "'name'"),
        (body(wire(queue_key=5)), "'queue_key'"),
        (body(wire(execution_key=["k"])), "'execution_key'"),
        (body(wire(retry_count=-1)), "'retry_count'"),
        (body(wire(retry_count=True)), "'retry_count'"),
        (body(wire(retry_count=1.0)), "'retry_count'"),
        (body(wire(queued_at="now")), "'queued_at'"),
        (body(wire(max_execution_time=0)), "'max_execution_time'"),
        (body(wire(max_execution_time=False)), "'max_execution_time'"),
    ],
)
def test_invalid_fields(raw, detail):
    with pytest.raises(BadMessage) as caught:
        message.decode(raw, CT)
    assert caught.value.reason == "invalid_fields"
    assert detail in caught.value.detail


def test_unknown_job_name():
    with pytest.raises(UnknownJob) as caught:
        message.decode(body(wire(name="evil.module:Payload")), CT)
    assert caught.value.reason == "unknown_job"
    assert isinstance(caught.value, BadMessage)
    assert "evil.module:Payload" in str(caught.value)


def test_unknown_job_name_with_a_fallback_keeps_the_wire_name():
    decoded = message.decode(body(wire(name="gone:Job")), CT, fallback=UnregisteredJob)
    assert type(decoded) is UnregisteredJob and decoded.name == "gone:Job"
    assert json.loads(message.encode(decoded))["name"] == "gone:Job"
    with pytest.raises(UnknownJob):
        decoded.perform(decoded.args)


def test_extra_fields_are_ignored_for_forward_compatibility():
    assert type(message.decode(body(wire(priority=3)), CT)) is Resize


def test_args_mutated_after_create_fail_encode_naming_the_value():
    job = Resize.create({"image": 1})
    job.args["when"] = object()
    with pytest.raises(TypeError, match=r"args\['when'\]"):
        message.encode(job)


@pytest.mark.parametrize(("body", "expected"), [
    (json.dumps(wire(id="abc")).encode(), ("img-9", "abc")),
    (json.dumps(wire(id="abc", name="nowhere:Job", retry_count="x")), ("img-9", "abc")),
    (json.dumps(wire(queue_key=None)).encode(), None),
    (json.dumps(wire(queue_key=7)).encode(), None),
    (json.dumps(wire(id="")).encode(), None),
    (b"[1, 2]", None),
    (b"\xff garbage", None),
])
def test_the_queue_key_of_a_message_that_is_not_a_valid_job(body, expected):
    assert message.queue_key_of(body) == expected
