"""Delayed jobs without a broker: due times, routes through the levels, the coordinator's counts."""

from __future__ import annotations

import math

import pytest

from roger.amqp import delay
from roger.due import MAX_DELAY, delay_seconds, due_ms
from roger.partition.state import CANCELLED_TTL, State
from roger.settings import Settings

NOW = 1_800_000_000.0


def test_a_fractional_delay_waits_whole_seconds_rounded_up():
    due = due_ms(1.2345, None, NOW)
    assert due == math.floor((NOW + 1.2345) * 1000)
    assert delay_seconds(due, NOW) == 2  # whole seconds in RabbitMQ, rounded up
    assert delay_seconds(due, NOW + 5) == 0


def test_a_whole_delay_waits_exactly_that_many_seconds():
    # The due time is kept to the ms, rounded down, so a whole delay published
    # a moment later is not rounded up to one more second.
    now = 1_800_000_000.1234567
    due = due_ms(10, None, now)
    assert delay_seconds(due, now) == 10
    assert delay_seconds(due, now + 0.0004) == 10


def test_the_route_of_a_delay_spells_its_bits_and_ends_with_the_queue():
    settings = Settings(system_exchange_prefix="p")
    assert delay.route(settings, 5, "app-default") == ("p.delay.02", "1.0.1.app-default")
    assert delay.route(settings, 1, "app-default") == ("p.delay.00", "1.app-default")
    exchange, key = delay.route(settings, MAX_DELAY, "app-default")
    assert exchange == f"p.delay.{delay.LEVELS - 1}" and key.count("1") == delay.LEVELS


def test_a_routing_key_that_would_be_too_long_is_refused_with_a_reason():
    settings = Settings()
    long_queue = "p" * 100 + "-" + "q" * 100
    assert delay.route(settings, 3600, long_queue)  # fits
    with pytest.raises(ValueError, match="routing key"):
        delay.route(settings, MAX_DELAY, long_queue)


def test_every_level_waits_its_power_of_two_and_moves_on_to_the_next():
    settings = Settings(system_exchange_prefix="p")
    top = delay.level_arguments(settings, 3)
    assert top["x-message-ttl"] == 8000 and top["x-dead-letter-exchange"] == "p.delay.02"
    assert top["x-dead-letter-strategy"] == "at-least-once"
    assert top["x-overflow"] == "reject-publish"  # at-least-once needs it
    assert delay.level_arguments(settings, 0)["x-dead-letter-exchange"] == "p.delay.deliver"


def test_delayed_jobs_are_counted_per_queue_until_due():
    state = State()
    state.add_delayed({"default": 3, "other": 1}, NOW + 10, NOW)
    state.add_delayed({"default": 2}, NOW + 20, NOW)
    assert state.delayed_counts(NOW) == {"default": 5, "other": 1}
    assert state.delayed_counts(NOW + 10) == {"default": 2}
    assert state.delayed_counts(NOW + 20) == {}


def test_a_million_delayed_jobs_cost_a_bounded_number_of_buckets():
    state = State()
    for i in range(100_000):  # one due second each, spread over a year
        state.add_delayed({"default": 10}, NOW + 10 + i * 315, NOW)
    assert state.delayed_counts(NOW) == {"default": 1_000_000}
    assert len(state.delayed["default"]) < 2_000  # far ones share day-wide buckets


def test_the_counts_survive_a_save_and_load():
    state = State()
    state.add_delayed({"default": 4}, NOW + 100, NOW)
    loaded = State.from_dict(state.to_dict(), NOW)
    assert loaded.delayed_counts(NOW) == {"default": 4}


def test_a_key_of_a_delayed_job_counts_its_ttl_from_the_due_time():
    state = State()
    state.claim([("k", "job")], NOW, until=NOW + 30 * 86400)
    ttl = 7 * 86400
    assert state.expire_keys(NOW + 8 * 86400 - ttl) == []  # 8 days on: still held
    assert state.expire_keys(NOW + 38 * 86400 - ttl) == [("k", "job")]


def test_a_cancel_is_remembered_until_the_last_delayed_job_is_due():
    state = State()
    assert state.cancel("a", NOW) == NOW + CANCELLED_TTL
    state.add_delayed({"default": 1}, NOW + 90 * 86400, NOW)
    until = state.cancel("b", NOW)
    assert until >= NOW + 90 * 86400
    state.expire(NOW + 2 * CANCELLED_TTL)
    assert "b" in state.cancelled and "a" not in state.cancelled


def test_an_at_in_milliseconds_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="not milliseconds"):
        due_ms(None, NOW * 1000, NOW)
