"""Job classes and callbacks the runtime tests run in real worker processes.

Jobs report what happened by appending JSON lines to the file named in their
args (`out`): workers are other processes, and a file is what survives them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from roger.job import Job


def record(path: str, **fields) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(fields) + "\n")


def read(path: str | Path) -> list[dict]:
    """Every complete record in `path` so far.

    A worker may be writing while the test reads: a read can catch its line
    half-written, so only lines that end with a newline count.
    """
    p = Path(path)
    if not p.exists():
        return []
    *complete, _partial = p.read_text().split("\n")
    return [json.loads(line) for line in complete if line.strip()]


def events(path: str | Path, kind: str) -> list[dict]:
    """The records in `path` of one kind (``"start"``, ``"end"``, ``"on_error"``...)."""
    return [e for e in read(path) if e["event"] == kind]


def ends(path: str | Path) -> list[dict]:
    """The records of jobs that finished."""
    return events(path, "end")


class Record(Job):
    """Records its start and end; sleeps `sleep` seconds in between, or waits (up to a
    minute) until the file `until` exists: a gate the test opens when it has seen
    what it needs, instead of a race against a sleep."""

    def perform(self, args):
        start = time.time()
        record(args["out"], event="start", id=self.id, pid=os.getpid(), t=start,
               retry_count=self.retry_count)
        if args.get("sleep"):
            time.sleep(args["sleep"])
        if args.get("until"):
            deadline = time.monotonic() + 60
            while not os.path.exists(args["until"]) and time.monotonic() < deadline:
                time.sleep(0.01)  # the test is another process: a file is the signal
        record(args["out"], event="end", id=self.id, pid=os.getpid(), t=time.time(),
               retry_count=self.retry_count, redelivered=self.redelivered)


class RetryableRecord(Record):
    retryable = True


class WaitForKill(Job):
    """Announces its pid, then waits to be killed (bounded)."""

    def perform(self, args):
        record(args["out"], event="start", id=self.id, pid=os.getpid(),
               retry_count=self.retry_count)
        if self.retry_count > 0 or self.redelivered:
            return  # the second attempt completes
        time.sleep(60)


class RetryableWaitForKill(WaitForKill):
    retryable = True


class Fail(Job):
    retryable = True

    def perform(self, args):
        record(args["out"], event="start", id=self.id, retry_count=self.retry_count)
        raise ValueError(f"fail #{self.retry_count}")


class Hang(Job):
    max_execution_time = 0.5

    def perform(self, args):
        record(args["out"], event="start", id=self.id, pid=os.getpid())
        time.sleep(60)


class ExitHard(Job):
    """Ends its worker the rude way: os._exit(code) or a signal to itself."""

    def perform(self, args):
        record(args["out"], event="start", id=self.id, pid=os.getpid())
        if "signal" in args:
            os.kill(os.getpid(), getattr(signal, args["signal"]))
        os._exit(args.get("code", 0))


class Callbacks:
    """Records every callback to the job's `out` file; before_run's state is a token."""

    def before_run(self, partition, job):
        record(job.args["out"], event="before_run", id=job.id, partition=partition)
        return {"token": job.id[:6]}

    def after_run(self, partition, job, result, state):
        record(job.args["out"], event="after_run", id=job.id, state=state)

    def on_error(self, partition, job, error, traceback, state):
        record(job.args["out"], event="on_error", id=job.id, error=type(error).__name__,
               message=str(error), traceback=traceback, state=state,
               signal=getattr(error, "signal", None))

    def on_buried(self, partition, job, error, traceback, state):
        record(job.args["out"], event="on_buried", id=job.id, error=type(error).__name__)


class BrokenCallbacks:
    def before_run(self, partition, job):
        raise RuntimeError("before_run is broken")

    def after_run(self, partition, job, result, state):
        raise RuntimeError("after_run is broken")


class Keyed(Record):
    """A Record whose queue_key and execution_key come from its args."""

    def queue_key(self, args):
        return args.get("qkey")

    def execution_key(self, args):
        return args.get("xkey")


class KeyedFail(Fail):
    """A Fail (retryable) whose queue_key comes from its args."""

    def queue_key(self, args):
        return args.get("qkey")


class CancelCallbacks(Callbacks):
    def on_cancel(self, partition, job):
        record(job.args["out"], event="on_cancel", id=job.id, pid=os.getpid())


class Raise(Job):
    """Raises what `args["raise"]` names: SystemExit, KeyboardInterrupt, BaseException..."""

    def perform(self, args):
        import builtins

        record(args["out"], event="start", id=self.id, pid=os.getpid())
        raise getattr(builtins, args["raise"])("raised on purpose")


class EatMemory(Job):
    """Allocates past an address-space limit it sets on its own worker."""

    def perform(self, args):
        import resource

        record(args["out"], event="start", id=self.id, pid=os.getpid())
        limit = 512 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        hog = bytearray(2 * limit)
        return len(hog)


class CrashAlways(Job):
    retryable = True

    def perform(self, args):
        record(args["out"], event="start", id=self.id, retry_count=self.retry_count)
        os.kill(os.getpid(), signal.SIGKILL)


class Bounded(Record):
    """A `Record` with a time limit (test_prefetch: counted from its start, not its delivery)."""

    max_execution_time = 3.0


class Gated(Record):
    """A `Record` that, once started, waits (at most 60 s) for the file ``args["gate"]``:
    the test decides when it ends, so no other job can start before it checked."""

    def perform(self, args):
        record(args["out"], event="start", id=self.id, pid=os.getpid(), t=time.time(),
               retry_count=self.retry_count)
        deadline = time.monotonic() + 60
        while not os.path.exists(args["gate"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        record(args["out"], event="end", id=self.id, pid=os.getpid(), t=time.time(),
               retry_count=self.retry_count, redelivered=self.redelivered)


class FirstSleeps(Job):
    """Records its start and end; the first run (no `flag` file yet) sleeps `sleep` s."""

    def perform(self, args):
        record(args["out"], event="start", id=self.id, pid=os.getpid(), t=time.time())
        if not os.path.exists(args["flag"]):
            with open(args["flag"], "w"):
                pass
            time.sleep(args.get("sleep", 60))
        record(args["out"], event="end", id=self.id, pid=os.getpid(), t=time.time())
