"""The settle policy: each outcome's disposition and callbacks, in one table."""

import pytest

import roger
from roger.amqp import topology
from roger.callbacks import Callbacks
from roger.partition.policy import decide, fire, next_delay
from roger.settings import Settings


class Plain(roger.Job):
    def perform(self, args):
        return None


class Retried(roger.Job):
    retryable = True

    def perform(self, args):
        return None


LEVELS = [1, 3]


@pytest.mark.parametrize("job_class, retries, outcome, disposition, reason, callbacks", [
    (Plain, 0, "done", "done", "done", ("after_run",)),
    (Plain, 0, "cancelled", "cancelled", "cancelled", ("on_cancel",)),
    (Plain, 0, "error", "failed", "error", ("on_error",)),
    (Plain, 0, "timeout", "failed", "timeout", ("on_error",)),
    (Plain, 0, "crashed", "failed", "worker_crashed", ("on_error",)),
    (Retried, 0, "error", "retry", "error", ("on_error",)),
    (Retried, 1, "timeout", "retry", "timeout", ("on_error",)),
    (Retried, 2, "error", "bury", "error", ("on_error", "on_buried")),
    (Retried, 2, "crashed", "bury", "worker_crashed", ("on_error", "on_buried")),
    (Retried, 5, "done", "done", "done", ("after_run",)),
])
def test_each_outcome_settles_one_way(job_class, retries, outcome, disposition, reason,
                                      callbacks):
    job = job_class.create({})
    job.retry_count = retries
    decision = decide(job, outcome, LEVELS)
    assert (decision.disposition, decision.reason, decision.callbacks) == (
        disposition, reason, callbacks)


def test_the_delay_is_the_level_of_the_retry_count():
    assert [next_delay(n, [5, 5, 30]) for n in range(4)] == [5, 5, 30, None]


def test_repeated_levels_share_one_retry_queue_and_fractions_keep_their_milliseconds():
    settings = Settings(retry_levels=[5, 5, 5.0, 1.5, 0.25, 1.5], _config_file=None)
    retry_queues = {name: arguments["x-message-ttl"] for name, arguments
                    in topology.queue_arguments(settings, "p", "q").items() if ".retry." in name}
    assert retry_queues == {"p-q.retry.5": 5000, "p-q.retry.1.5": 1500, "p-q.retry.0.25": 250}


def test_fire_passes_each_callback_its_own_arguments():
    calls = []

    class Hooks:
        def after_run(self, partition, job, result, state):
            calls.append(("after_run", partition, result, state))

        def on_error(self, partition, job, error, traceback, state):
            calls.append(("on_error", partition, str(error), traceback, state))

        def on_buried(self, partition, job, error, traceback, state):
            calls.append(("on_buried", partition, str(error), traceback, state))

        def on_cancel(self, partition, job):
            calls.append(("on_cancel", partition))

    hooks = Callbacks(Hooks())
    job = Retried.create({})
    job.retry_count = 2
    fire(hooks, decide(job, "done", LEVELS), "p", job, result=7, state="s")
    fire(hooks, decide(job, "error", LEVELS), "p", job, error=ValueError("x"), traceback="tb")
    fire(hooks, decide(job, "cancelled", LEVELS), "p", job)
    assert calls == [("after_run", "p", 7, "s"), ("on_error", "p", "x", "tb", None),
                     ("on_buried", "p", "x", "tb", None), ("on_cancel", "p")]
