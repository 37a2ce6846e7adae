"""Producer side against a real RabbitMQ: enqueue, topology, retries, admin.

Each test uses its own partition and deletes its queues afterwards. The
broker is inspected through a separate raw py-amqp connection, as an
operator would look at it, never through the code under test.
"""

import json
import os
import time
from uuid import uuid4

import amqp
import kombu
import pytest

import roger
from roger import config, message
from roger.amqp import broker, publish, topology
from roger.partition import policy, settlement
from roger.settings import Settings
from tests.helpers import wait_for

RABBIT = "127.0.0.1:5672"


class Ping(roger.Job):
    def perform(self, args):
        return args


class RetryablePing(roger.Job):
    retryable = True

    def perform(self, args):
        return None


class Sorted(roger.Job):
    def queue_type(self, args):
        return "other"

    def perform(self, args):
        return None


@pytest.fixture(scope="module")
def rabbit():
    """A raw channel for inspecting queues."""
    conn = amqp.Connection(RABBIT, userid="guest", password="guest")
    conn.connect()
    yield conn
    conn.close()


@pytest.fixture
def settings():
    # One short retry level so dead-lettering is observable within a test.
    return Settings(retry_levels=[1], max_buried=3, _config_file=None)


@pytest.fixture
def partition(settings, rabbit):
    previous = config._settings
    config.configure(settings)
    name = f"t{uuid4().hex[:8]}"
    yield name
    config._settings = previous
    channel = rabbit.channel()
    for queue in ("default", "other"):
        for queue_name in topology.queue_arguments(settings, name, queue):
            channel.queue_delete(queue_name)
    channel.close()


def count(rabbit, queue_name):
    channel = rabbit.channel()
    try:
        return channel.queue_declare(queue_name, passive=True).message_count
    finally:
        channel.close()


def drain(rabbit, queue_name):
    """Consume (ack) every message of a queue, in order."""
    channel = rabbit.channel()
    out = []
    while (msg := channel.basic_get(queue_name, no_ack=True)) is not None:
        out.append(msg)
    channel.close()
    return out


def test_enqueue_lands_a_persistent_json_message_in_a_durable_quorum_queue(partition, rabbit):
    job = Ping.create({"n": 1}).enqueue(partition)

    assert (job.partition, job.queue) == (partition, "default")
    assert abs(job.queued_at - time.time() * 1000) < 5000
    [msg] = drain(rabbit, f"{partition}-default")
    assert msg.properties["delivery_mode"] == 2
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["message_id"] == job.id
    assert json.loads(msg.body)["args"] == {"n": 1}

    # The queue is durable and quorum: RabbitMQ refuses any other declaration.
    for durable, kind in ((False, "quorum"), (True, "classic")):
        channel = rabbit.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            channel.queue_declare(
                f"{partition}-default", durable=durable, auto_delete=False,
                arguments={"x-queue-type": kind},
            )


def test_queue_type_hook_and_override_choose_the_queue(partition, rabbit):
    Sorted.create({}).enqueue(partition)
    Ping.create({}).enqueue(partition, queue="other")
    assert count(rabbit, f"{partition}-other") == 2


def test_classic_queue_type_setting(partition, rabbit, settings):
    classic = Settings(**(settings.model_dump() | {"queue_type": "classic"}))
    roger.enqueue_many([Ping.create({})], partition, settings=classic)
    channel = rabbit.channel()
    channel.queue_declare(  # equivalent declaration: accepted
        f"{partition}-default", durable=True, auto_delete=False,
        arguments={"x-queue-type": "classic"},
    )
    channel.close()


def test_enqueue_many_publishes_1000_jobs_and_waits_for_confirms_once(
    partition, rabbit, monkeypatch
):
    events = []
    real_publish, real_drain = amqp.Channel._basic_publish, amqp.Connection.drain_events

    def spy_publish(self, *args, **kwargs):
        events.append("publish")
        return real_publish(self, *args, **kwargs)

    def spy_drain(self, timeout=None):
        events.append("wait" if timeout != 0 else "peek")
        return real_drain(self, timeout=timeout)

    jobs = [Ping.create({"n": n}) for n in range(1000)]
    roger.enqueue_many(jobs[:1], partition)  # connect and declare outside the count
    events.clear()
    monkeypatch.setattr(amqp.Channel, "_basic_publish", spy_publish)
    monkeypatch.setattr(amqp.Connection, "drain_events", spy_drain)

    roger.enqueue_many(jobs[1:], partition)

    monkeypatch.undo()
    assert events.count("publish") == 999
    last_publish = len(events) - 1 - events[::-1].index("publish")
    assert "wait" not in events[:last_publish], "waited for a confirm before publishing all"
    assert count(rabbit, f"{partition}-default") == 1000
    assert all(job.queue == "default" for job in jobs)


def test_queued_jobs_lists_in_order_without_consuming(partition, rabbit):
    jobs = roger.enqueue_many([Ping.create({"n": n}) for n in range(5)], partition)

    first = roger.info.queued_jobs(partition, "default", limit=3)
    everything = roger.info.queued_jobs(partition, "default")

    assert [job.id for job in first] == [job.id for job in jobs[:3]]
    assert [job.id for job in everything] == [job.id for job in jobs]
    assert all(type(job) is Ping and job.partition == partition for job in everything)
    assert [json.loads(m.body)["id"] for m in drain(rabbit, f"{partition}-default")] == [
        job.id for job in jobs
    ]


def test_retry_queue_dead_letters_back_to_main_after_its_ttl(partition, rabbit, settings):
    job = Ping.create({"n": 1})
    job.partition, job.queue, job.queued_at = partition, "default", 1
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        topology.declare_queues(conn.default_channel, settings, partition, "default")
        delay = settlement.publish_retry(conn.channel(), settings, job, "boom")

    assert delay == 1
    assert count(rabbit, f"{partition}-default.retry.1") == 1
    wait_for(lambda: count(rabbit, f"{partition}-default") == 1, timeout=5,
             what="the retried job back in its queue")
    [msg] = drain(rabbit, f"{partition}-default")
    back = message.decode(msg.body, msg.properties["content_type"])
    assert (back.id, back.retry_count) == (job.id, 1)
    assert job.retry_count == 0  # the consumer's record is left alone


def test_a_job_past_its_last_level_is_buried_with_its_error_cut_short(partition, rabbit,
                                                                       settings):
    job = RetryablePing.create({})
    job.partition, job.queue, job.queued_at, job.retry_count = partition, "default", 1, 1
    decision = policy.decide(job, "error", settings.retry_levels)
    assert (decision.disposition, decision.callbacks) == ("bury", ("on_error", "on_buried"))
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        topology.declare_queues(conn.default_channel, settings, partition, "default")
        settlement.publish_buried(conn.channel(), settings, job, decision.reason,
                                  "Boom: x" * 2000)

    [buried] = roger.info.buried_jobs(partition, "default")
    assert buried.id == job.id and buried.buried_reason == "error"
    assert buried.buried_error.startswith("Boom") and len(buried.buried_error) <= 4000


def test_buried_is_bounded_by_max_buried_and_can_be_retried(partition, rabbit, settings):
    jobs = [Ping.create({"n": n}) for n in range(5)]
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        topology.declare_queues(conn.default_channel, settings, partition, "default")
        channel = conn.channel()
        for job in jobs:
            job.partition, job.queue, job.queued_at, job.retry_count = partition, "default", 1, 1
            settlement.publish_buried(channel, settings, job, "error", "boom")

    buried = roger.info.buried_jobs(partition, "default")
    assert [job.id for job in buried] == [job.id for job in jobs[2:]]  # oldest dropped

    assert roger.retry_buried(partition, "default") == 3

    assert count(rabbit, f"{partition}-default.buried") == 0
    main = drain(rabbit, f"{partition}-default")
    back = [message.decode(m.body, m.properties["content_type"]) for m in main]
    assert [job.id for job in back] == [job.id for job in jobs[2:]]
    assert all(job.retry_count == 0 and job.queued_at > 1 for job in back)


def test_rejected_keeps_the_raw_body_and_says_why(partition, rabbit, settings):
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        topology.declare_queues(conn.default_channel, settings, partition, "default")
        settlement.publish_rejected(
            conn.channel(), settings, partition, "default", b"\xff not json",
            {"trace": "abc"}, "undecodable", content_type="text/plain",
        )

    [msg] = drain(rabbit, f"{partition}-default.rejected")
    assert msg.body == b"\xff not json"
    # A quorum queue (the default queue_type) adds its delivery count on delivery.
    headers = {k: v for k, v in msg.headers.items() if k != "x-delivery-count"}
    assert headers == {"trace": "abc", "x-roger-reason": "undecodable"}
    assert msg.properties["content_type"] == "text/plain"


def test_settle_channel_survives_a_channel_error(partition, rabbit, settings):
    # RabbitMQ closes a channel on an error and py-amqp silently reopens it,
    # no longer in confirm mode: the next settle must still be confirmed.
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        channel = conn.channel()
        topology.declare_queues(channel, settings, partition, "default")
        settlement.publish_rejected(channel, settings, partition, "default", b"1", None, "x")
        other = Settings(**(settings.model_dump() | {"queue_type": "classic"}))
        with pytest.raises(roger.BrokerError, match="inequivalent"):
            topology.declare_queues(channel, other, partition, "default")
        settlement.publish_rejected(channel, settings, partition, "default", b"2", None, "x")

    assert [m.body for m in drain(rabbit, f"{partition}-default.rejected")] == [b"1", b"2"]


def test_publishing_from_a_callback_while_waiting_for_confirms(partition, rabbit, settings):
    # A consumer callback dispatched during one settle's wait may settle another.
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        conn.connect()
        channel = conn.channel()
        topology.declare_queues(channel, settings, partition, "default")
        target = topology.rejected_queue_name(partition, "default")
        nested = []

        def on_ack(tag, multiple):
            if not nested:
                nested.append(tag)
                publish.publish_confirmed(channel, [publish.Outgoing(target, b"inner")], 5)

        channel.confirm_select()
        channel.events["basic_ack"].add(on_ack)
        publish.publish_confirmed(channel, [publish.Outgoing(target, b"outer")], 5)
        publish.publish_confirmed(channel, [publish.Outgoing(target, b"after")], 5)

    assert [m.body for m in drain(rabbit, target)] == [b"outer", b"inner", b"after"]


def test_purge_empties_the_queue_and_its_retries(partition, rabbit, settings):
    roger.enqueue_many([Ping.create({}) for _ in range(4)], partition)
    channel = rabbit.channel()
    # Retry queues exist once a job has been retried (declared on demand).
    topology.declare_queues(channel, settings, partition, "default")
    channel.basic_publish(amqp.Message(b"{}"), routing_key=f"{partition}-default.retry.1")
    channel.close()

    assert roger.purge(partition, "default") == 5
    assert count(rabbit, f"{partition}-default") == 0
    assert roger.purge(partition, "default") == 0


def test_listing_a_queue_that_does_not_exist_says_so(partition):
    with pytest.raises(roger.BrokerError, match="not found"):
        roger.info.queued_jobs(partition, "nothere")


def test_a_queue_deleted_after_declaration_is_declared_again(partition, rabbit):
    Ping.create({}).enqueue(partition)
    channel = rabbit.channel()
    channel.queue_delete(f"{partition}-default")
    channel.close()

    Ping.create({}).enqueue(partition)  # the process still believes it exists

    assert count(rabbit, f"{partition}-default") == 1


def test_existing_queue_with_other_arguments_is_a_broker_error(partition, rabbit):
    channel = rabbit.channel()
    channel.queue_declare(f"{partition}-default", durable=True, auto_delete=False,
                          arguments={"x-queue-type": "classic"})
    channel.close()
    with pytest.raises(roger.BrokerError, match="x-queue-type"):
        Ping.create({}).enqueue(partition)


def test_reconnects_once_when_the_connection_was_dropped(partition, rabbit, settings):
    Ping.create({}).enqueue(partition)
    producer = broker.get_broker(settings)
    # Simulate RabbitMQ or a middlebox dropping the idle connection.
    producer._conn.connection.transport.sock.shutdown(2)

    Ping.create({}).enqueue(partition)

    assert count(rabbit, f"{partition}-default") == 2


def test_forked_child_publishes_on_its_own_connection(partition, rabbit):
    Ping.create({"who": "parent"}).enqueue(partition)
    pid = os.fork()
    if pid == 0:  # child: must never return into pytest
        code = 1
        try:
            Ping.create({"who": "child"}).enqueue(partition)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    Ping.create({"who": "parent again"}).enqueue(partition)  # parent's connection intact

    who = [json.loads(m.body)["args"]["who"] for m in drain(rabbit, f"{partition}-default")]
    assert who == ["parent", "child", "parent again"]


def test_unreachable_broker_is_a_broker_error_without_the_password():
    unreachable = Settings(broker_url="amqp://user:hunter2@127.0.0.1:1//", connect_timeout=1)
    with pytest.raises(roger.BrokerError) as caught:
        roger.enqueue_many([Ping.create({})], "tunreachable", settings=unreachable)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_oversized_job_is_refused_before_publishing(partition, settings):
    small = Settings(**(settings.model_dump() | {"max_message_bytes": 100}))
    with pytest.raises(ValueError, match="max_message_bytes"):
        roger.enqueue_many([Ping.create({"blob": "x" * 200})], partition, settings=small)


def test_count_messages_counts_many_queues_and_names_the_missing_ones(rabbit, monkeypatch):
    # More queues than one window holds, with missing ones among them (each
    # closes the channel it was counted on): every name gets its own answer.
    monkeypatch.setattr(topology, "COUNT_WINDOW", 4)
    prefix = f"t{uuid4().hex[:8]}"
    setup = rabbit.channel()
    names = []
    for i in range(10):
        name = f"{prefix}-q{i}"
        names.append(name)
        if i in (3, 7):
            continue  # never declared
        setup.queue_declare(name, durable=False, auto_delete=False)
        for _ in range(i):
            setup.basic_publish(amqp.Message(b"x"), routing_key=name)
    try:
        wait_for(lambda: count(rabbit, names[9]) == 9, what="the messages to land")
        counts = topology.count_messages(rabbit.channel, names)
        assert counts == {name: (None if i in (3, 7) else (i, 0)) for i, name in enumerate(names)}
    finally:
        for i, name in enumerate(names):
            if i not in (3, 7):
                setup.queue_delete(name)
        setup.close()
