"""Testing mode (`roger.testing`): jobs run inline or are captured, and no broker is needed.

Every test here runs with `broker_url` pointing at a closed port: anything
that tried to reach RabbitMQ would fail with `roger.BrokerError`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib

import pytest

import roger
from roger import config, testing
from tests.helpers import ROOT
from tests.roger.support import child_env

calls: list[tuple] = []


class Hooks:
    """The `callbacks` of these tests: each call is appended to `calls`."""

    def before_run(self, partition, job):
        calls.append(("before_run", job.args["n"], job.retry_count))
        return f"state-{job.args['n']}"

    def after_run(self, partition, job, result, state):
        calls.append(("after_run", job.args["n"], result, state))

    def on_error(self, partition, job, error, traceback, state):
        calls.append(("on_error", job.args["n"], str(error), state))

    def on_buried(self, partition, job, error, traceback, state):
        calls.append(("on_buried", job.args["n"], str(error), state))


class Echo(roger.Job):
    def perform(self, args):
        calls.append(("perform", args["n"], self.partition, self.queue))
        return args["n"] * 2


class Keyed(roger.Job):
    def queue_key(self, args):
        return f"key-{args['n']}"

    def perform(self, args):
        calls.append(("perform", args["n"]))
        if args.get("twin"):
            try:
                Keyed.create({"n": args["n"]}).enqueue("myapp")
            except roger.DuplicateJob:
                calls.append(("twin refused", args["n"]))


class Flaky(roger.Job):
    retryable = True

    def perform(self, args):
        raise ValueError(f"attempt {self.retry_count}")


class KeyedFlaky(Keyed):
    retryable = True

    def perform(self, args):
        super().perform(args)
        raise ValueError(f"attempt {self.retry_count}")


class Broken(roger.Job):
    def perform(self, args):
        raise RuntimeError("not retryable")


class Parent(roger.Job):
    def perform(self, args):
        calls.append(("parent starts", args["n"]))
        Echo.create({"n": args["n"] + 1}).enqueue("myapp", queue="children")
        calls.append(("parent ends", args["n"]))


class Reports(roger.Job):
    def queue_type(self, args):
        return "reports"

    def perform(self, args):
        calls.append(("perform", args["n"]))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_broker():
    """Settings whose broker cannot be reached, these tests' callbacks, two retry levels."""
    previous = config._settings
    config.configure(roger.Settings(
        broker_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}//",
        callbacks=f"{__name__}:Hooks", retry_levels=[1, 3]))
    calls.clear()
    yield
    config._settings = previous


def test_inline_runs_the_job_at_once_with_its_callbacks_and_no_broker():
    with testing.inline() as run:
        job = Echo.create({"n": 7}).enqueue("myapp")
        assert calls == [("before_run", 7, 0), ("perform", 7, "myapp", "default"),
                         ("after_run", 7, 14, "state-7")]
    assert (job.partition, job.queue) == ("myapp", "default") and job.queued_at > 0
    assert [(j.id, j.args) for j in run.jobs("myapp")] == [(job.id, {"n": 7})]
    assert (run.failed, run.buried) == ([], [])


def test_enqueue_needs_the_broker_again_after_the_block():
    with testing.inline():
        pass
    with pytest.raises(roger.BrokerError, match="cannot connect"):
        Echo.create({"n": 1}).enqueue("myapp")
    assert calls == []


def test_enqueue_many_runs_each_job_in_order():
    with testing.inline():
        roger.enqueue_many([Echo.create({"n": n}) for n in (1, 2, 3)], "myapp")
    assert [c[1] for c in calls if c[0] == "perform"] == [1, 2, 3]


def test_args_go_through_json_as_on_the_wire():
    job = Echo.create({"n": 1, "items": []})
    job.args["items"].append({1, 2})  # changed after create: JSON cannot carry a set
    with testing.inline() as run, pytest.raises(TypeError, match=r"args\['items'\]\[0\]"):
        job.enqueue("myapp")
    assert calls == [] and run.jobs() == []


def test_a_retryable_job_runs_again_at_once_at_each_level_then_is_buried():
    with testing.inline() as run:
        job = Flaky.create({"n": 5}).enqueue("myapp")
    errors = [c for c in calls if c[0] == "on_error"]
    assert errors == [("on_error", 5, f"attempt {n}", "state-5") for n in (0, 1, 2)]
    assert calls[-1] == ("on_buried", 5, "attempt 2", "state-5")
    [buried] = run.buried
    assert (buried.id, buried.retry_count, buried.buried_reason) == (job.id, 2, "error")
    assert buried.buried_error == "ValueError: attempt 2"
    assert run.failed == []


def test_a_job_that_is_not_retryable_fails_once():
    with testing.inline() as run:
        job = Broken.create({"n": 1}).enqueue("myapp")
    assert [c[0] for c in calls] == ["before_run", "on_error"]
    assert [(j.id, j.failed_error) for j in run.failed] == [(job.id, "RuntimeError: not retryable")]
    assert run.buried == []


def test_a_queue_key_is_taken_while_its_job_runs_and_released_when_it_settles():
    with testing.inline() as run:
        Keyed.create({"n": 1, "twin": True}).enqueue("myapp")
        Keyed.create({"n": 1}).enqueue("myapp")  # the first one settled: its key is free
    assert [c for c in calls if c[0] in ("perform", "twin refused")] == [
        ("perform", 1), ("twin refused", 1), ("perform", 1)]
    assert len(run.jobs()) == 2


def test_a_queue_key_is_held_through_retries_and_released_when_buried():
    with testing.inline() as run:
        KeyedFlaky.create({"n": 2, "twin": True}).enqueue("myapp")
        KeyedFlaky.create({"n": 2}).enqueue("myapp")
    assert calls.count(("twin refused", 2)) == 3  # at every attempt
    assert len(run.buried) == 2


def test_a_job_enqueued_by_a_running_job_runs_after_it():
    with testing.inline() as run:
        Parent.create({"n": 1}).enqueue("myapp")
    steps = [c[:2] for c in calls if c[0] in ("parent starts", "parent ends", "perform")]
    assert steps == [("parent starts", 1), ("parent ends", 1), ("perform", 2)]
    assert [(j.name, j.queue) for j in run.jobs("myapp", "children")] == [(Echo.name, "children")]


def test_capture_records_jobs_without_running_them():
    with testing.capture() as captured:
        Echo.create({"id": 7}).enqueue("myapp")
        Reports.create({"n": 1}).enqueue("myapp")
        Echo.create({"id": 8}).enqueue("otherapp", queue="other")
        assert [j.args for j in captured.jobs("myapp")] == [{"id": 7}, {"n": 1}]
        assert [j.args for j in captured.jobs("myapp", "reports")] == [{"n": 1}]
        assert [(j.partition, j.queue) for j in captured.jobs("otherapp")] == [
            ("otherapp", "other")]
        captured.clear()
        assert captured.jobs() == []
    assert calls == []


def test_captured_jobs_hold_their_queue_keys_until_cleared():
    with testing.capture() as captured:
        job = Keyed.create({"n": 1}).enqueue("myapp")
        with pytest.raises(roger.DuplicateJob, match="key-1"):
            Keyed.create({"n": 1}).enqueue("myapp")
        job.enqueue("myapp")  # the same record again: a second copy, not a clash
        Keyed.create({"n": 1}).enqueue("otherapp")  # keys are per partition
        captured.clear()
        Keyed.create({"n": 1}).enqueue("myapp")
    assert len(captured.jobs()) == 1


def test_a_bad_callbacks_setting_fails_the_enqueue_and_claims_no_key():
    config.configure(config.get_settings(), callbacks="nowhere:Hooks")
    with testing.inline() as run:
        with pytest.raises(ValueError, match="callbacks: cannot load 'nowhere:Hooks'"):
            Keyed.create({"n": 1}).enqueue("myapp")
        assert run.jobs() == []
        config.configure(config.get_settings(), callbacks=None)
        Keyed.create({"n": 1}).enqueue("myapp")  # its key was not taken
    assert calls == [("perform", 1)]


def test_the_readme_example_project_passes_with_the_fixtures_of_the_entry_point(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing code that enqueues jobs", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"```python\n(# (\S+).*?)```", section, re.S)
    assert [path for _, path in files] == ["myapp/jobs.py", "tests/test_invoices.py"]
    (tmp_path / "myapp").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "myapp" / "__init__.py").touch()
    for code, path in files:
        (tmp_path / path).write_text(code)
    # The plugin as the entry point names it; `no:roger` first, in case an
    # installed roger registered it already under that name.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugin = pyproject["project"]["entry-points"]["pytest11"]["roger"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:roger",
         "-p", plugin],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=child_env(ROGER_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}//"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
