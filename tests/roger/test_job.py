"""roger.Job: definition, registration and records (no broker needed)."""

import datetime
import enum
import pickle

import pytest

import roger
from roger import registry
from roger.errors import UnknownJob


class SendInvoice(roger.Job):
    retryable = True
    max_execution_time = 30

    def queue_key(self, args):
        return f"invoice-{args['id']}"

    def execution_key(self, args):
        return f"customer-{args['customer']}"

    def perform(self, args):
        return args["id"] * 2


class Plain(roger.Job):
    def perform(self, args):
        return None


class Named(roger.Job):
    name = "billing.named"

    def perform(self, args):
        return None


class Color(enum.StrEnum):
    RED = "red"


def test_subclass_registers_under_module_and_qualname():
    assert SendInvoice.name == f"{__name__}:SendInvoice"
    assert registry.resolve(SendInvoice.name) is SendInvoice


def test_explicit_name_is_used_and_not_inherited():
    class Child(Named):
        pass

    assert registry.resolve("billing.named") is Named
    assert Child.name.endswith(":test_explicit_name_is_used_and_not_inherited.<locals>.Child")


def test_two_classes_cannot_share_a_name():
    with pytest.raises(ValueError, match="already used"):

        class Impostor(roger.Job):
            name = "billing.named"


def test_abstract_base_can_opt_out_of_registration():
    class Base(roger.Job, register=False):
        pass

    with pytest.raises(UnknownJob):
        registry.resolve(Base.name)
    with pytest.raises(TypeError, match="not a registered job class"):
        Base.create({})


def test_resolve_never_imports_what_it_is_asked_for():
    with pytest.raises(UnknownJob) as caught:
        registry.resolve("os:system")
    assert caught.value.reason == "unknown_job"


def test_create_fills_every_record_field():
    job = SendInvoice.create({"id": 7, "customer": 3})

    assert len(job.id) == 32 and int(job.id, 16) >= 0
    assert job.args == {"id": 7, "customer": 3}
    assert job.queue_key == "invoice-7"
    assert job.execution_key == "customer-3"
    assert job.retry_count == 0
    assert job.queued_at is None and job.started_at is None
    assert job.max_execution_time == 30
    assert job.redelivered is False
    assert job.partition is None and job.queue is None


def test_create_on_the_base_class_with_a_subclass():
    job = roger.Job.create(SendInvoice, {"id": 1, "customer": 2})
    assert type(job) is SendInvoice and job.queue_key == "invoice-1"


def test_create_on_the_base_class_alone_is_refused():
    with pytest.raises(TypeError, match="SendInvoice.create"):
        roger.Job.create({"id": 1})


def test_ids_are_unique():
    assert len({Plain.create({}).id for _ in range(1000)}) == 1000


def test_a_caller_chosen_id_in_both_spellings():
    job = SendInvoice.create({"id": 7, "customer": 3}, id="invoice-7")
    same = roger.Job.create(SendInvoice, {"id": 7, "customer": 3}, id="invoice-7")
    longest = Plain.create({}, id="A.z_0:9-" * 16)
    assert job.id == same.id == "invoice-7"
    assert job.queue_key == "invoice-7" and job.args == {"id": 7, "customer": 3}
    assert len(longest.id) == 128


@pytest.mark.parametrize("bad", ["", "x" * 129, "invoice 7", "invoice/7", "facture-é", "a\n"])
def test_an_id_outside_the_alphabet_or_length_is_a_value_error(bad):
    with pytest.raises(ValueError, match="invalid job id.*1-128 letters"):
        Plain.create({}, id=bad)


@pytest.mark.parametrize("bad", [7, b"invoice-7", ["invoice-7"]])
def test_an_id_that_is_not_a_string_is_a_type_error(bad):
    with pytest.raises(TypeError, match="job id must be a string"):
        roger.Job.create(Plain, {}, id=bad)


def test_an_execution_key_too_long_for_its_waiting_queue_fails_at_create():
    class ByCustomer(roger.Job):
        def execution_key(self, args):
            return args["key"]

    longest = "k" * (255 - 100 - len("-execution-waiting-"))
    assert ByCustomer.create({"key": longest}).execution_key == longest
    with pytest.raises(ValueError, match=r"ByCustomer.execution_key\(\).* 137 bytes.*at most 136"):
        ByCustomer.create({"key": longest + "k"})
    with pytest.raises(ValueError, match="138 bytes"):  # bytes, not characters
        ByCustomer.create({"key": "é" * 69})


def test_default_hooks():
    job = Plain.create({"x": 1})
    assert job.queue_key is None and job.execution_key is None
    assert job.queue_type(job.args) == "default"
    assert Plain.retryable is False and job.max_execution_time is None
    with pytest.raises(NotImplementedError):
        roger.Job.perform(job, {})


def test_args_are_a_json_copy():
    original = {"items": (1, 2), "color": Color.RED, "nested": {"a": [1.5, None, True]}}
    job = Plain.create(original)
    original["nested"]["a"].append("later")

    assert job.args == {"items": [1, 2], "color": "red", "nested": {"a": [1.5, None, True]}}
    assert type(job.args["color"]) is str


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ({"when": datetime.date(2024, 1, 1)}, "args['when']"),
        ({"items": [1, {2, 3}]}, "args['items'][1]"),
        ({"ratio": float("nan")}, "args['ratio']"),
        ({"big": float("inf")}, "args['big']"),
        ({1: "int key"}, "args has the key 1"),
        (b"bytes", "args is a bytes"),
    ],
)
def test_non_json_args_fail_at_create_naming_the_value(args, where):
    with pytest.raises(TypeError) as caught:
        Plain.create(args)
    assert where in str(caught.value)
    assert "Plain.create()" in str(caught.value)


def test_circular_args_are_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="circular"):
        Plain.create(loop)


def test_hooks_must_return_strings():
    class BadKey(roger.Job):
        def queue_key(self, args):
            return 42

    with pytest.raises(TypeError, match="queue_key"):
        BadKey.create({})


def test_bad_class_attributes_fail_at_definition():
    with pytest.raises(TypeError, match="max_execution_time"):

        class Negative(roger.Job):
            max_execution_time = -1


def test_records_are_not_made_by_calling_the_class():
    with pytest.raises(TypeError, match="create"):
        Plain()


def test_perform_sees_the_record():
    job = SendInvoice.create({"id": 21, "customer": 1})
    assert job.perform(job.args) == 42


def test_repr_names_class_id_and_place():
    job = Plain.create({})
    text = repr(job)
    assert "Plain" in text and job.id in text and "not enqueued" in text
    job.partition, job.queue = "myapp", "default"
    assert "partition='myapp' queue='default'" in repr(job)


def test_records_pickle_for_other_processes():
    job = SendInvoice.create({"id": 1, "customer": 2})
    copy = pickle.loads(pickle.dumps(job))
    assert type(copy) is SendInvoice and copy.__dict__ == job.__dict__


def test_import_modules_names_the_failing_module():
    registry.import_modules(["json"])
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        registry.import_modules(["no_such_module_xyz"])
