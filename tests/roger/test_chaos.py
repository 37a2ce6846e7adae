"""The ledger run's short form (issue 7): every fault kind once, and no job lost.

Two real nodes serve 2 partitions x 2 queues while `benchmarks.chaos`
publishes a few hundred numbered jobs and injects each fault once, in a
fixed order, each on a healthy system; then every confirmed job id must be
done (once, or more where a fault made a rerun unavoidable) or
dead-lettered, never lost. The broker is restored whatever happens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import FAULT_KINDS, ChaosConfig, run


@pytest.mark.timeout(420)  # bounded waits inside; this only guards against a hang
def test_no_confirmed_job_is_lost_under_every_fault(tmp_path: Path) -> None:
    report = run(ChaosConfig.short(tmp_path / "chaos"))
    table = report.render()
    print(table)  # shown with -s, and by pytest on failure
    assert report.injected_kinds == set(FAULT_KINDS), table
    assert report.confirmed >= report.cfg.jobs, table
    assert report.lost == 0, table
    assert report.delayed > 0, table  # some jobs went through the delay levels
    assert report.early == 0, table  # and none of them ran before its due time
    assert report.still_queued == 0, table
    assert report.recovered, table
    accounted = report.done_once + report.duplicated + report.dead
    assert accounted == report.confirmed, table
