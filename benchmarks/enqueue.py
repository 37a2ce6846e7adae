"""enqueue: messages per second into RabbitMQ, the way each system's users publish.

Nothing consumes meanwhile. Each case first publishes a few warm-up
messages (connection, channel and queue declaration are not timed), then
times its messages, then checks that the queue really holds them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kombu

from benchmarks import rabbit
from benchmarks.common import Config
from benchmarks.report import Metric, Ratio, Section, interleaved
from benchmarks.systems import CelerySystem, DramatiqSystem, KombuSystem, RogerSystem, System

WARM_UP = 10
OUT = "/nonexistent"  # the jobs never run here; their argument only needs its usual size


class RawPublisher(KombuSystem):
    """Plain kombu publishing (persistent JSON), with or without publisher confirms.

    With ``confirm_publish`` py-amqp waits for the broker's ack after each
    message: the synchronous-confirm rate that roger's single `enqueue`
    (which always confirms) is held against.
    """

    def __init__(self, cfg: Config, tag: str, queue_type: str, confirms: bool) -> None:
        super().__init__(cfg, tag, queue_type)
        self.confirms = confirms
        self.label = f"raw kombu, {'confirms' if confirms else 'no confirms'} ({queue_type})"
        self.conn: kombu.Connection | None = None
        self.producer: Any = None

    def send(self, body: dict, kind: str = "noop") -> None:
        if self.producer is None:
            options = {"transport_options": {"confirm_publish": True}} if self.confirms else {}
            self.conn = kombu.Connection(self.url, connect_timeout=5, **options)
            rabbit.kombu_queue(self.queue, self.queue_type)(self.conn.default_channel).declare()
            self.producer = self.conn.Producer(serializer="json")
        self.producer.publish(body, routing_key=self.queue, delivery_mode=2)

    def enqueue_all(self, bodies: Any, kind: Any = "noop") -> None:
        for body in bodies:
            self.send(body)

    def close_producer(self) -> None:
        if self.conn is not None:
            self.conn.release()


def _roger_many(batch: int) -> Callable[[System, list[dict]], None]:
    def publish(system: System, bodies: list[dict]) -> None:
        import roger
        from benchmarks.jobs import NoOp

        assert isinstance(system, RogerSystem)
        for i in range(0, len(bodies), batch):
            roger.enqueue_many([NoOp.create(b) for b in bodies[i:i + batch]],
                               system.partitions[0], settings=system.settings)
    return publish


def _one_by_one(system: System, bodies: list[dict]) -> None:
    for body in bodies:
        system.send(body, "noop")


@dataclass(frozen=True)
class Case:
    label: str
    bulk: bool  # bulk cases publish `enqueue_bulk` messages, others `enqueue_single`
    make: Callable[[Config, str], System]
    publish: Callable[[System, list[dict]], None] = _one_by_one


def _cases() -> list[Case]:
    cases = []
    for qt in ("quorum", "classic"):
        def roger(cfg: Config, tag: str, qt: str = qt) -> System:
            return RogerSystem(cfg, tag, qt)

        cases += [
            Case(f"roger Job.enqueue ({qt})", False, roger),
            Case(f"roger enqueue_many x100 ({qt})", True, roger, _roger_many(100)),
            Case(f"roger enqueue_many x1000 ({qt})", True, roger, _roger_many(1000)),
            Case(f"raw kombu, confirms ({qt})", False,
                 lambda cfg, tag, qt=qt: RawPublisher(cfg, tag, qt, True)),
            Case(f"raw kombu, no confirms ({qt})", True,
                 lambda cfg, tag, qt=qt: RawPublisher(cfg, tag, qt, False)),
        ]
    cases += [Case("celery apply_async", True, CelerySystem),
              Case("dramatiq send", True, DramatiqSystem)]
    return cases


def measure(case: Case, cfg: Config, tag: str) -> float:
    """msg/s of `case` publishing its messages; the queue is checked to hold them all."""
    count = cfg.enqueue_bulk if case.bulk else cfg.enqueue_single
    system = case.make(cfg, tag)
    try:
        case.publish(system, [rabbit.body_of(i, OUT) for i in range(WARM_UP)])
        bodies = [rabbit.body_of(i, OUT) for i in range(count)]
        t = time.perf_counter()
        case.publish(system, bodies)
        elapsed = time.perf_counter() - t
        rabbit.wait_total(system.url, system.queue_names(), WARM_UP + count)
        return count / elapsed
    finally:
        system.cleanup()


def run(cfg: Config, workdir: str) -> Section:
    cases = _cases()
    runs = [(case.label, lambda tag, case=case: {"rate": measure(case, cfg, tag)})
            for case in cases]
    samples = interleaved(cfg, "enqueue", runs, lambda m: f"{m['rate']:,.0f} msg/s")
    ratios = []
    for qt in ("quorum", "classic"):
        ratios += [
            Ratio(f"roger Job.enqueue ({qt})", f"raw kombu, confirms ({qt})", "rate", 0.9),
            Ratio(f"roger enqueue_many x1000 ({qt})", f"raw kombu, no confirms ({qt})", "rate",
                  0.8),
            Ratio(f"roger enqueue_many x100 ({qt})", f"raw kombu, no confirms ({qt})", "rate"),
        ]
    ratios += [Ratio("roger enqueue_many x1000 (classic)", "dramatiq send", "rate"),
               Ratio("roger enqueue_many x1000 (classic)", "celery apply_async", "rate"),
               Ratio("roger enqueue_many x1000 (quorum)", "dramatiq send", "rate")]
    notes = [
        f"Single-message cases publish {cfg.enqueue_single:,} messages, bulk cases "
        f"{cfg.enqueue_bulk:,}, after {WARM_UP} untimed warm-up messages; nothing consumes "
        "meanwhile. All messages are persistent, with the same small dict argument.",
        "roger always waits for publisher confirms: `Job.enqueue` one round trip per job, "
        "`enqueue_many` one per batch (job creation is timed too). Raw kombu *confirms* waits "
        "for each message's confirm (`confirm_publish`); *no confirms*, Celery's "
        "`apply_async` and Dramatiq's `send` (both unconfirmed by default) return once the "
        "message is written to the socket. Every case ends by checking that the queue holds "
        "all its messages (not timed).",
        "Celery and Dramatiq publish to classic queues; roger and raw kombu are measured on "
        "both types, and each roger figure is compared with raw kombu on its own queue type.",
        *([f"No `@{cfg.baseline.rev}` rows: this benchmark times the driver's own publishing, "
           "which always runs today's roger (`--baseline` swaps the nodes' code only)."]
          if cfg.baseline else []),
    ]
    return Section("enqueue", "Enqueue", samples, [Metric("rate", "msg/s")], ratios, notes)
