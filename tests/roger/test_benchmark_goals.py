"""Issue 13's goals table (`benchmarks.goals`): ratios paired per run, judged on the median."""

from __future__ import annotations

from benchmarks import goals, mixed, throughput
from benchmarks.common import Samples
from benchmarks.report import Section


def _row(section: Section, figure: str) -> list[str]:
    line = next(x for x in section.extra if x.startswith(f"| {figure}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ratios_pair_the_systems_of_each_run_and_the_median_is_judged():
    s = Samples()
    for rep, (roger, dramatiq) in enumerate([(3000, 2000), (2000, 2000), (4000, 2000)]):
        s.add(throughput.RQ, {"steady": roger, "cpu_sut": 100, "cpu_broker": 50, "busy": 96},
              rep)
        s.add("dramatiq", {"steady": dramatiq, "cpu_sut": 200, "cpu_broker": 100}, rep)
    table = goals.table([Section("throughput", "T", s, [])])
    assert _row(table, "the same, roger (quorum, the default) / Dramatiq")[2:] == \
        ["1.50 (1.00-2.00)x", "yes"]
    cpu = _row(table, "CPU per no-op job (node + RabbitMQ), roger (quorum)")
    assert cpu[2:] == ["0.50 (0.50-0.50)x", "yes"]
    # Classic was not measured in this run: said, not judged.
    classic = _row(table, "steady no-op jobs/s, roger (classic)")
    assert classic[3] == "-" and "not measured" in classic[2]


def test_a_row_whose_benchmark_did_not_run_names_it():
    s = Samples()
    default = mixed.default_multiplier()
    s.add(mixed.label(1.0), {"p99": 400.0}, 0)
    s.add(mixed.label(default), {"p99": 440.0}, 0)
    table = goals.table([Section("mixed", "M", s, [])])
    row = next(x for x in table.extra if "mixed workload" in x)
    assert "1.10x" in row and "**no**" in row
    assert any("`python -m benchmarks latency`" in x for x in table.extra)


def test_no_table_without_a_benchmark_it_draws_on():
    assert goals.table([Section("enqueue", "E", Samples(), [])]) is None
