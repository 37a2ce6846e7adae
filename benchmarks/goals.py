"""Issue 13's goals (throughput): one table across the benchmarks that measure them.

`python -m benchmarks` prints it after the benchmarks it ran, with each
row's figure, goal, what was measured (median and range over the runs of a
ratio taken within each run) and whether it was met; a row whose benchmark
did not run says which one measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import mixed, throughput
from benchmarks.common import Samples, Summary
from benchmarks.report import Section, cell

Judged = tuple[str, bool]


@dataclass(frozen=True)
class Goal:
    figure: str
    goal: str
    bench: str  # the benchmark whose samples it needs
    judge: Callable[[Section], Judged | None]  # None: not measured in that run


def per_run(samples: Samples, system: str, metric: Callable[[dict[str, float | None]], float | None]
            ) -> list[float | None]:
    """`metric` of `system` in each run (None where that run failed)."""
    columns = samples.values.get(system, {})
    runs = max((len(c) for c in columns.values()), default=0)
    out = []
    for rep in range(runs):
        row = {k: (c[rep] if rep < len(c) else None) for k, c in columns.items()}
        out.append(metric(row))
    return out


def key(name: str) -> Callable[[dict[str, float | None]], float | None]:
    return lambda row: row.get(name)


def cpu_total(row: dict[str, float | None]) -> float | None:
    """CPU per job of the system's processes and RabbitMQ together."""
    a, b = row.get("cpu_sut"), row.get("cpu_broker")
    return a + b if a is not None and b is not None else None


def ratio(samples: Samples, num: str, den: str,
          metric: Callable[[dict[str, float | None]], float | None]) -> Summary | None:
    pairs = zip(per_run(samples, num, metric), per_run(samples, den, metric), strict=False)
    return Summary.of(a / b for a, b in pairs if a is not None and b)


def at_least(target: float, num: str, den: str, metric: str | Callable = "steady",
             data: str | None = None) -> Callable[[Section], Judged | None]:
    return _compare(target, num, den, metric, data, higher=True)


def at_most(target: float, num: str, den: str, metric: str | Callable,
            data: str | None = None) -> Callable[[Section], Judged | None]:
    return _compare(target, num, den, metric, data, higher=False)


def _compare(target: float, num: str, den: str, metric: str | Callable, data: str | None,
             higher: bool) -> Callable[[Section], Judged | None]:
    fn = key(metric) if isinstance(metric, str) else metric

    def judge(section: Section) -> Judged | None:
        samples = section.data.get(data) if data else section.samples
        summary = ratio(samples, num, den, fn) if samples is not None else None
        if summary is None:
            return None
        met = summary.median >= target if higher else summary.median <= target
        return f"{cell(summary, '{:.2f}')}x", met
    return judge


def each(metric: str, fmt: str, unit: str, met: Callable[[float], bool], *systems: str
         ) -> Callable[[Section], Judged | None]:
    """`metric` of each of `systems` (not a ratio); met when every median passes `met`."""
    def judge(section: Section) -> Judged | None:
        found = [(s, Summary.of(section.samples.get(s, metric))) for s in systems]
        found = [(s, x) for s, x in found if x is not None]
        if not found:
            return None
        text = "; ".join(f"{s}: {cell(x, fmt)} {unit}" for s, x in found)
        return text, all(met(x.median) for _, x in found)
    return judge


def busy(*systems: str) -> Callable[[Section], Judged | None]:
    return each("busy", "{:.0f}", "%", lambda x: x >= 95, *systems)


def p99_at_most(ms: float, *systems: str) -> Callable[[Section], Judged | None]:
    return each("p99", "{:.2f}", "ms", lambda x: x <= ms, *systems)


def goals() -> list[Goal]:
    rq, rc = throughput.RQ, throughput.RC
    dflt = mixed.default_multiplier()
    return [
        Goal("steady no-op jobs/s, roger (classic) / Dramatiq (`-p 4 -t 1`, classic)", ">= 2x",
             "throughput", at_least(2.0, rc, "dramatiq")),
        Goal("the same, roger (quorum, the default) / Dramatiq", ">= 1.2x", "throughput",
             at_least(1.2, rq, "dramatiq")),
        Goal("the same, roger (quorum) / raw kombu at roger's prefetch, batched acks", ">= 0.8x",
             "throughput", at_least(0.8, rq, throughput.KQB)),
        Goal("the same, roger (classic) / raw kombu at roger's prefetch, batched acks",
             ">= 0.8x", "throughput", at_least(0.8, rc, throughput.KCB)),
        Goal("machine busy while a backlog drains (roger's processes + RabbitMQ, of 2 cores)",
             ">= 95 %", "throughput", busy(rq, rc)),
        Goal("CPU per no-op job (node + RabbitMQ), roger (quorum) / Dramatiq's", "<= 0.7x",
             "throughput", at_most(0.7, rq, "dramatiq", cpu_total)),
        Goal("CPU per no-op job (node + RabbitMQ), roger (classic) / Dramatiq's", "<= 0.7x",
             "throughput", at_most(0.7, rc, "dramatiq", cpu_total)),
        Goal("idle-node latency enqueue -> perform start, p50, roger (quorum) / Dramatiq",
             "<= 1x", "latency", at_most(1.0, "roger (quorum)", "dramatiq", "p50")),
        Goal("the same, roger (classic) / Dramatiq", "<= 1x", "latency",
             at_most(1.0, "roger (classic)", "dramatiq", "p50")),
        Goal("idle-node latency enqueue -> perform start, p99", "<= 4 ms", "latency",
             p99_at_most(4.0, "roger (quorum)", "roger (classic)")),
        Goal("4 partitions x 1 queue x 2 workers / 1 x 1 x 4, steady jobs/s", ">= 0.95x",
             "scale", at_least(0.95, "4 partitions x 1 queue x 2 workers",
                               "1 partition x 1 queue x 4 workers", data="split")),
        Goal(f"mixed workload (1 % sleep 1 s, 4 workers): no-op p99 wait, default "
             f"prefetch_multiplier {dflt:g} / 1", "<= 1x", "mixed",
             at_most(1.0, mixed.label(dflt), mixed.label(1.0), "p99")),
    ]


def table(sections: list[Section]) -> Section | None:
    """Issue 13's goals table, or None when no benchmark it draws on ran."""
    by_name = {s.name: s for s in sections}
    if not any(g.bench in by_name for g in goals()):
        return None
    lines = ["| figure | goal | measured, median (min-max) | met |", "|---|---|---|---|"]
    for goal in goals():
        section = by_name.get(goal.bench)
        judged = goal.judge(section) if section is not None else None
        if judged is None:
            measured, met = f"not measured (`python -m benchmarks {goal.bench}`)", "-"
        else:
            measured, met = judged[0], "yes" if judged[1] else "**no**"
        lines.append(f"| {goal.figure} | {goal.goal} | {measured} | {met} |")
    notes = ["Each ratio is taken within one run (the systems of a run are minutes apart) and "
             "summarised over the runs; *met* judges the median. Issue 13's goals."]
    return Section("goals", "Throughput goals (issue 13)", Samples(), [], [], notes, lines)
