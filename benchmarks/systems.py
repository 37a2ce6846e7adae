"""The systems under test, behind one small interface.

A `System` owns one run's queue(s): it enqueues jobs the way its users
would, starts its workers as a subprocess (`benchmarks.procs.Spawned`),
and deletes everything it declared. The benchmarks (throughput, latency,
scale) are written once against this interface, so every system gets the
same workload, the same completion check and the same clock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from benchmarks import rabbit
from benchmarks.common import BenchError, Config
from benchmarks.procs import ReadTimeout, Spawned, python, venv_script

if TYPE_CHECKING:
    from benchmarks.baseline import Baseline

Kind = Literal["noop", "latency", "mixed"]
BATCH = 1000  # roger.enqueue_many batch size when filling a queue


class System:
    """One system, one run: `enqueue_all` or `send`, then `start`, always `cleanup`."""

    label: str = "?"

    def __init__(self, cfg: Config, tag: str) -> None:
        self.cfg = cfg
        self.url = cfg.broker_url
        self.marker = cfg.name(tag)  # every name this run declares contains it
        self.proc: Spawned | None = None
        self.ready_info: dict[str, Any] = {}
        self.stop_grace = 10.0  # seconds for a graceful stop before everything is killed
        # False when the broker itself is thrown away afterwards (an isolated node).
        self.delete_queues = True

    def queue_names(self) -> list[str]:
        """The main queue(s) jobs go to (to check their depth)."""
        raise NotImplementedError

    def enqueue_all(self, bodies: Sequence[dict], kind: Kind = "noop") -> None:
        """Fill the queue(s) as fast as this system's users would."""
        for body in bodies:
            self.send(body, kind)

    def send(self, body: dict, kind: Kind) -> None:
        """Enqueue one job, the plain way (latency)."""
        raise NotImplementedError

    def start(self, log: str) -> Spawned:
        """Start the workers; returns as soon as the process runs (not necessarily ready)."""
        raise NotImplementedError

    def close_producer(self) -> None:
        """Close the driver's publishing connection, if any."""

    def cleanup(self) -> None:
        """Stop the workers and delete every queue and exchange of this run."""
        try:
            if self.proc is not None:
                self.proc.stop(self.stop_grace)
        finally:
            self.proc = None
            with rabbit.suppress_errors():
                self.close_producer()
            if self.delete_queues:
                with rabbit.suppress_errors():
                    rabbit.delete(self.url, self.queue_names())
                with rabbit.suppress_errors():
                    rabbit.sweep(self.url, self.marker)


# ------------------------------------------------------------------ roger


class RogerSystem(System):
    """A roger node: `partitions` partitions with `queues` each (default: one of 4 workers).

    Jobs go to each partition's first queue. With `baseline` (``--baseline
    REV``) the node runs roger as of that revision (`benchmarks.baseline`);
    the driver still enqueues with today's roger (same wire format).
    `settings`: more `roger.Settings` fields (e.g. ``idle_after``); never
    with a baseline, whose revision may not know them.
    """

    def __init__(self, cfg: Config, tag: str, queue_type: str = "quorum",
                 partitions: int = 1, queues: dict[str, int] | None = None,
                 baseline: Baseline | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, tag)
        import roger

        self.baseline = baseline
        self.label = f"roger ({queue_type})" + (baseline.suffix if baseline else "")
        self.queues = queues or {"default": 4}
        self.partitions = [f"{self.marker}-p{i}" for i in range(partitions)]
        # A short state dir: the control socket lives there (Unix paths are short).
        self.state_dir = tempfile.mkdtemp(prefix="rb")
        self.fields: dict[str, Any] = {
            "broker_url": self.url,
            "partitions": {p: dict(self.queues) for p in self.partitions},
            "imports": ["benchmarks.jobs"],
            "node_name": self.marker,
            "state_dir": self.state_dir,
            "queue_type": queue_type,
            **(settings or {}),
        }
        if baseline is not None and settings:
            raise ValueError(f"a baseline node takes no extra settings ({sorted(settings)})")
        self.settings = roger.Settings(**self.fields)
        roger.configure(self.settings)  # Job.enqueue uses the process-wide settings
        # No close_producer: roger's public API has no way to close the driver's
        # publishing connection (its internals are not public API),
        # so it lives as long as the driver, as in a user's process; roger
        # reconnects by itself when RabbitMQ dropped it while idle.
        self._next = 0

    @property
    def first_queue(self) -> str:
        return next(iter(self.queues))

    def queue_names(self) -> list[str]:
        return [f"{p}-{q}" for p in self.partitions for q in self.queues]

    def _job_class(self, kind: Kind) -> Any:
        from benchmarks import jobs

        return {"noop": jobs.NoOp, "latency": jobs.Latency, "mixed": jobs.Mixed}[kind]

    def enqueue_all(self, bodies: Sequence[dict], kind: Kind = "noop") -> None:
        import roger

        cls = self._job_class(kind)
        # Round-robin over the partitions (the scale benchmark has several).
        for n, partition in enumerate(self.partitions):
            mine = bodies[n::len(self.partitions)]
            for i in range(0, len(mine), BATCH):
                jobs = [cls.create(b) for b in mine[i:i + BATCH]]
                roger.enqueue_many(jobs, partition, self.first_queue, settings=self.settings)

    def send(self, body: dict, kind: Kind) -> None:
        partition = self.partitions[self._next % len(self.partitions)]
        self._next += 1
        self._job_class(kind).create(body).enqueue(partition, self.first_queue)

    def start(self, log: str) -> Spawned:
        # A file, not argv: a node of 200 partitions has a long configuration.
        path = os.path.join(self.state_dir, "settings.json")
        with open(path, "w") as f:
            json.dump(self.fields, f)
        if self.baseline is None:
            argv, env = python("-m", "benchmarks.peers.roger_node", path), None
        else:
            argv = self.baseline.python("-m", "benchmarks.peers.roger_node", path)
            env = self.baseline.env()
        self.proc = Spawned(argv, env=env, stdin=True, log=log)
        return self.proc

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        """Block until `Node.start()` returned in the runner; its timings and root pid.

        A baseline node must have imported roger (and its sibling packages)
        from the baseline checkout, or this raises.

        Gives up early, with roger's own reason, as soon as the node reports a
        partition as *waiting* (it could not start and will be retried):
        `Node.start()` would otherwise keep retrying for a long time.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.proc.read_line(min(1.0, max(0.0, deadline - time.monotonic())))
                break
            except ReadTimeout:
                if time.monotonic() >= deadline:
                    raise BenchError(f"the node did not start within {timeout:g} s") from None
                log = self.proc.log_lines()
                waiting = [x for x in log if " is waiting " in x]
                if waiting:
                    reasons = [x for x in log if any(
                        w in x for w in ("cannot", "refused", "timed out", "failed"))] or waiting
                    fds = rabbit.file_descriptors()
                    broker = (f"; RabbitMQ uses {fds.get('total_used')} of "
                              f"{fds.get('total_limit')} file descriptors, "
                              f"{fds.get('sockets_used')} of {fds.get('sockets_limit')} sockets"
                              if fds else "")
                    raise BenchError(
                        f"a partition could not start (roger lists it as waiting); first "
                        f"reason logged: {reasons[0].split(' ', 2)[-1][:300]}{broker}"
                    ) from None
        self.ready_info = json.loads(line)
        if self.baseline is not None:
            self.baseline.check(self.ready_info.get("packages", {}), f"the {self.label} node")
        return self.ready_info

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


Factory = Callable[[Config, str], System]


def roger_rows(cfg: Config, label: str, **options: Any) -> list[tuple[str, Factory]]:
    """(label, factory) of a `RogerSystem(**options)`; with ``--baseline``, then its twin
    (``label @REV``) that runs the baseline's roger."""
    rows: list[tuple[str, Factory]] = [
        (label, lambda c, tag: RogerSystem(c, tag, **options))]
    if cfg.baseline is not None:
        rows.append((cfg.baseline.label(label),
                     lambda c, tag: RogerSystem(c, tag, baseline=c.baseline, **options)))
    return rows


# ----------------------------------------------------------------- celery


class CelerySystem(System):
    """Celery prefork, ``-c 4``, late acks, prefetch multiplier 1, classic queue."""

    label = "celery"

    def __init__(self, cfg: Config, tag: str, workers: int = 4) -> None:
        super().__init__(cfg, tag)
        from benchmarks.peers import celery_app

        self.app = celery_app
        self.queue = self.marker
        self.workers = workers

    def queue_names(self) -> list[str]:
        return [self.queue]

    def _task(self, kind: Kind) -> Any:
        return self.app.noop if kind == "noop" else self.app.latency

    def enqueue_all(self, bodies: Sequence[dict], kind: Kind = "noop") -> None:
        task = self._task(kind)
        with self.app.app.producer_or_acquire() as producer:
            for body in bodies:
                task.apply_async((body,), queue=self.queue, producer=producer)

    def send(self, body: dict, kind: Kind) -> None:
        self._task(kind).apply_async((body,), queue=self.queue)

    def start(self, log: str) -> Spawned:
        argv = [venv_script("celery"), "-A", "benchmarks.peers.celery_app", "worker",
                "-P", "prefork", "-c", str(self.workers), "-Q", self.queue,
                "-n", f"{self.marker}@%h", "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.proc = Spawned(argv, env={"BENCH_BROKER_URL": self.url}, log=log)
        return self.proc

    def close_producer(self) -> None:
        # Nothing: the app's connection pool lives as long as the process, as in
        # a Celery user's process (closing it would break the module-level app).
        pass


# --------------------------------------------------------------- dramatiq


class DramatiqSystem(System):
    """Dramatiq with RabbitmqBroker, ``--processes 4 --threads 1``, classic queue."""

    label = "dramatiq"

    def __init__(self, cfg: Config, tag: str, processes: int = 4) -> None:
        super().__init__(cfg, tag)
        from benchmarks.peers import dramatiq_app

        self.module = dramatiq_app
        # Dramatiq queue names allow letters, digits, '-', '_' and '.'.
        self.queue = self.marker
        self.broker, self.noop, self.latency = dramatiq_app.build(self.queue, self.url)
        self.processes = processes

    def queue_names(self) -> list[str]:
        return self.module.queues(self.queue)

    def send(self, body: dict, kind: Kind) -> None:
        (self.noop if kind == "noop" else self.latency).send(body)

    def start(self, log: str) -> Spawned:
        argv = [venv_script("dramatiq"), "benchmarks.peers.dramatiq_app:broker",
                "--processes", str(self.processes), "--threads", "1", "--queues", self.queue]
        env = {"BENCH_QUEUE": self.queue, "BENCH_BROKER_URL": self.url}
        self.proc = Spawned(argv, env=env, log=log)
        return self.proc

    def close_producer(self) -> None:
        self.broker.close()


# ------------------------------------------------------------------ kombu


class KombuSystem(System):
    """The ceiling: one raw kombu consumer, one connection, prefetch 100.

    `batch_acks`: ack with AMQP's ``multiple`` flag, half a window at a time
    (as roger's consumer coalesces its acks), instead of one ack per message.
    """

    def __init__(self, cfg: Config, tag: str, queue_type: str = "classic",
                 prefetch: int = 100, batch_acks: bool = False) -> None:
        super().__init__(cfg, tag)
        self.label = f"raw kombu ({queue_type})"
        self.queue = self.marker
        self.queue_type = queue_type
        self.prefetch = prefetch
        self.batch_acks = batch_acks

    def queue_names(self) -> list[str]:
        return [self.queue]

    def enqueue_all(self, bodies: Sequence[dict], kind: Kind = "noop") -> None:
        rabbit.publish_json(self.url, self.queue, bodies, self.queue_type)

    def start(self, log: str) -> Spawned:
        argv = python("-m", "benchmarks.peers.kombu_consumer", self.url, self.queue,
                      str(self.prefetch), *(["batch"] if self.batch_acks else []))
        self.proc = Spawned(argv, log=log)
        return self.proc


def log_path(workdir: str, system: System, what: str) -> str:
    """Where a run's subprocess output goes (kept for post-mortems of failed runs)."""
    # Labels hold spaces, parentheses and, with --baseline, a revision (maybe with '/').
    name = re.sub(r"[^A-Za-z0-9@~^._-]+", "_", system.label.replace("(", "").replace(")", ""))
    return os.path.join(workdir, f"{what}-{name}.log")
