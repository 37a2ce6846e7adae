"""The ledger run's delayed-job checks, without a broker (the run itself: test_chaos.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.chaos import ChaosConfig
from benchmarks.chaos.ledger import Completion, Ledger
from benchmarks.chaos.report import Report
from benchmarks.chaos.runner import ChaosRun


def completion(started: float, due_at: int | None) -> Completion:
    return Completion(n=1, id="j1", node="n1", pid=1, attempt=0, redelivered=False,
                      partition="p", queue="q1", started=started, t=started + 0.1,
                      due_at=due_at)


def test_a_run_before_the_due_time_is_early_and_one_after_is_not():
    assert completion(100.0, 100_500).early
    assert not completion(100.5, 100_500).early
    assert not completion(100.0, None).early  # not a delayed job


def test_sink_lines_of_jobs_without_a_due_time_still_read(tmp_path: Path):
    ledger = Ledger(tmp_path)
    (tmp_path / "1.jsonl").write_text(
        '{"n":0,"id":"a","node":"n","pid":1,"attempt":0,"redelivered":false,'
        '"partition":"p","queue":"q1","started":1.0,"t":2.0}\n')
    ledger.read_sink()
    assert ledger.done_ids() == {"a"}


def test_the_report_shows_delayed_jobs_and_early_runs(tmp_path: Path):
    report = Report(ChaosConfig.short(tmp_path))
    report.delayed, report.early = 40, 1
    report.early_ids = ["#3 j3 started 12 ms early"]
    text = report.render()
    assert "| of the confirmed, delayed (1-5 s) | 40 |" in text
    assert "| **runs of a delayed job before its due time** | **1** |" in text
    assert "#3 j3 started 12 ms early" in text


def test_a_run_delays_through_delay_levels_of_its_own(tmp_path: Path):
    run = ChaosRun(ChaosConfig.short(tmp_path / "chaos"))
    job = run.ledger.make("p", "q1", 0.1, delay=3)
    assert job.delay == 3
    assert run.producer_settings.system_exchange_prefix == run.prefix
    assert run._levels()[0] == f"{run.prefix}.delay.00"
