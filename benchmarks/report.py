"""Tables: what a benchmark measured, as markdown for the terminal and RESULTS.md."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import procs
from benchmarks.common import BenchError, Config, Samples, Summary


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    fmt: str = "{:,.0f}"


@dataclass(frozen=True)
class Ratio:
    """num/den of `metric`, paired per repeat; `target` is the issue's goal, if any."""

    num: str
    den: str
    metric: str
    target: float | None = None


def baseline_ratios(cfg: Config, labels: list[str], metrics: list[str]) -> list[Ratio]:
    """With ``--baseline``: each of `labels` against its ``@REV`` twin, for each metric."""
    if cfg.baseline is None:
        return []
    return [Ratio(label, cfg.baseline.label(label), m) for label in labels for m in metrics]


def baseline_note(cfg: Config) -> list[str]:
    """With ``--baseline``: what the ``@REV`` rows are (a section's note)."""
    if cfg.baseline is None:
        return []
    b = cfg.baseline
    return [f"`... @{b.rev}`: the same roger system, its node running roger as of `{b.rev}` "
            f"({b.commit[:12]}, a temporary git worktree); the driver enqueues into it with "
            "today's roger (same wire format). Interleaved with today's in every repeat; a "
            f"ratio `X / X @{b.rev}` near 1 means no change beyond noise."]


@dataclass
class Section:
    """One benchmark's results."""

    name: str
    title: str
    samples: Samples
    metrics: list[Metric]
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # more markdown, after the tables
    # More samples, by name, for tables built across sections (`benchmarks.goals`).
    data: dict[str, Samples] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        if self.metrics:  # a section may consist of its notes and extra tables only
            lines += figures_table(self.samples, self.metrics)
        if self.ratios:
            lines += ["", *ratios_table(self.samples, self.ratios, self.metrics)]
        if self.samples.errors:
            lines += ["", "Failed attempts (each is retried once; only successful runs make "
                      "the figures):", ""]
            for system, errors in self.samples.errors.items():
                lines += [f"- {system}: {e}" for e in errors]
        if self.extra:
            lines += ["", *self.extra]
        return "\n".join(lines) + "\n"


def cell(summary: Summary | None, fmt: str) -> str:
    """``median (min-max)``; a single sample stands alone."""
    if summary is None:
        return "-"
    if any(math.isnan(v) for v in (summary.median, summary.low, summary.high)):
        return "n/a"
    if summary.n == 1:
        return fmt.format(summary.median)
    return f"{fmt.format(summary.median)} ({fmt.format(summary.low)}-{fmt.format(summary.high)})"


def figures_table(samples: Samples, metrics: list[Metric]) -> list[str]:
    lines = ["| system | " + " | ".join(m.header for m in metrics) + " | runs |",
             "|---" * (len(metrics) + 2) + "|"]
    for system in samples.values:
        cells = [cell(Summary.of(samples.get(system, m.key)), m.fmt) for m in metrics]
        runs = max((len(samples.get(system, m.key)) for m in metrics), default=0)
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {runs} |")
    return lines


def ratios_table(samples: Samples, ratios: list[Ratio], metrics: list[Metric]) -> list[str]:
    headers = {m.key: m.header for m in metrics}
    lines = ["| ratio | figure | median (min-max) | target | met |", "|---|---|---|---|---|"]
    for r in ratios:
        summary = Summary.of(samples.ratios(r.num, r.den, r.metric))
        target = f">= {r.target:g}" if r.target is not None else ""
        met = ""
        if r.target is not None and summary is not None:
            met = "yes" if summary.median >= r.target else "no"
        lines.append(f"| {r.num} / {r.den} | {headers.get(r.metric, r.metric)} | "
                     f"{cell(summary, '{:.2f}')} | {target} | {met} |")
    return lines


def progress(message: str) -> None:
    """One line of progress on stderr (stdout gets the tables)."""
    print(message, file=sys.stderr, flush=True)


def take(samples: Samples, label: str, rep: int, where: str,
         measure: Callable[[int], dict[str, float]], retries: int = 1) -> dict[str, float] | None:
    """Run `measure(attempt)` into `samples`; None (and the error recorded) if it failed.

    A failed measurement is retried once: the broker is shared, and other
    users' tests may drop its connections or restart it under us. Every
    failure is still listed in the results; a measurement during which RabbitMQ
    restarted (its Erlang VM changed pid) counts as failed. `attempt` (0, 1) goes into the
    names a measurement declares, so a retry never meets its predecessor's queues.
    """
    for attempt in range(retries + 1):
        try:
            broker = procs.broker_pids()
            metrics = measure(attempt)
            if procs.broker_pids() != broker:
                raise BenchError("RabbitMQ restarted during the measurement")
        except Exception as e:  # one failed sample must not lose the others
            text = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            again = attempt < retries
            progress(f"{where} {label}: FAILED{' (retrying)' if again else ''}: {text}")
            samples.fail(label, f"run {rep + 1}: {text[:500]}")
            if again:
                time.sleep(5)  # a restarting broker needs a moment
            continue
        samples.add(label, metrics, rep)
        return metrics
    return None


def interleaved(cfg: Config, name: str, runs: list[tuple[str, Callable[[str], dict[str, float]]]],
                describe: Callable[[dict[str, float]], str]) -> Samples:
    """Each of `runs` once per repeat, interleaved (rotating the order) so drift hits all alike.

    A run is (label, measure), where `measure(tag)` returns its metrics and
    puts `tag` into the names it declares; `describe(metrics)` ends its
    progress line. The samples keep the order of `runs`.
    """
    samples = Samples()
    for rep in range(cfg.repeat):
        shift = rep % len(runs)
        where = f"{name} {rep + 1}/{cfg.repeat}"
        for k, (label, measure) in enumerate(runs[shift:] + runs[:shift]):
            tag = f"{name[:2]}{rep}{k}"
            metrics = take(samples, label, rep, where,
                           lambda a, measure=measure, tag=tag: measure(f"{tag}a{a}"))
            if metrics is not None:
                progress(f"{where} {label}: {describe(metrics)}")
    samples.values = {label: samples.values[label] for label, _ in runs
                      if label in samples.values}
    return samples
