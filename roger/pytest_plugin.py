"""pytest fixtures for code that enqueues roger jobs, with no broker (see `roger.testing`).

Installing roger registers this module with pytest (the ``pytest11`` entry
point named ``roger``), so a project's tests can use the fixtures as they
are:

- ``roger_inline``: jobs enqueued during the test run at once, in the test's
  process (`roger.testing.inline`);
- ``roger_enqueued``: jobs enqueued during the test are recorded, not run
  (`roger.testing.capture`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from roger import testing


@pytest.fixture
def roger_inline() -> Iterator[testing.Inline]:
    """Run each job enqueued in the test at once, in this process; see `roger.testing.inline`."""
    with testing.inline() as run:
        yield run


@pytest.fixture
def roger_enqueued() -> Iterator[testing.Captured]:
    """Record the jobs enqueued in the test without running them; see `roger.testing.capture`."""
    with testing.capture() as captured:
        yield captured
