"""The status page in a real browser: headless Chromium, driven over the DevTools protocol.

These tests skip, saying why, where Chromium is not installed; ``.ci/run``
installs it and sets ``ROGER_REQUIRE_CHROMIUM``, so in CI they run (or
fail). Set ``ROGER_UPDATE_SCREENSHOT=1`` to write the screenshot of a busy
cluster to ``docs/status-page.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from testjobs import Fail, Record, events

import roger
from roger import Node
from tests.browser import Browser, find_chromium
from tests.helpers import ROOT, wait_for
from tests.roger.support import delete_partition, delete_queues, queue_depth, queue_names
from tests.roger.test_web_http import _publish_garbage
from tests.roger.websupport import TOKEN, paused

CHROMIUM = find_chromium()
MISSING = ("Chromium is not installed (`apt-get install -y chromium`, as .ci/run does): "
           "the status page's browser tests need it")


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("ROGER_REQUIRE_CHROMIUM"):  # CI, where apt could install it
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    with Browser(CHROMIUM) as b:
        yield b


def q(selector: str) -> str:
    """JavaScript for "the element `selector` finds" (null when there is none)."""
    return f"document.querySelector({json.dumps(selector)})"


def has(selector: str) -> str:
    """JavaScript for "the page has an element `selector` finds" (a boolean)."""
    return f"!!{q(selector)}"


def test_pause_pressed_on_the_page_stops_the_node_consuming(web_settings, partition, out,
                                                            browser):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    row = f'tr[data-queue="{partition}/default"]'
    with Node(settings):
        running = Record.create({"out": out, "sleep": 60})
        running.enqueue(partition)
        wait_for(lambda: events(out, "start"), what="the job to start")

        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{settings.http_port}/?refresh=1")
        job_row = f'tr[data-job="{running.id}"]'
        page.wait_for(has(job_row), what="the running job on the page")
        assert page.evaluate(f"{q(job_row + ' td[data-started]')}.textContent").endswith("s")

        page.type("#token", TOKEN)
        page.click(f'{row} button[data-action="pause"]')
        page.wait_for(has(f"{row} .chip.paused"), what="the queue shown paused")
        assert paused(settings, partition)  # as roger.info sees it, not only the page

        # Cancel the running job from the page: its worker is free, yet a job
        # enqueued now stays queued, as the page shows.
        page.click(f'{job_row} button[data-action="cancel"]')
        page.wait_for(f"!{has(job_row)}", what="the cancelled job gone from the page")
        waiting = Record.create({"out": out})
        waiting.enqueue(partition)
        page.wait_for(f"{q(row + ' td:nth-child(4)')}.textContent === '1'",
                      what="the new job shown ready")
        assert queue_depth(f"{partition}-default") == 1
        assert waiting.id not in [e["id"] for e in events(out, "start")]

        page.click(f'{row} button[data-action="resume"]')
        wait_for(lambda: waiting.id in [e["id"] for e in events(out, "end")],
                 what="the queued job to run once resumed")
        page.wait_for(f"!{has(row + ' .chip.paused')}", what="the queue shown consuming")


def test_a_wrong_token_typed_in_the_page_changes_nothing(web_settings, partition, browser):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    row = f'tr[data-queue="{partition}/default"]'
    with Node(settings):
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{settings.http_port}/?refresh=1")
        page.type("#token", "not-the-token")
        page.click(f'{row} button[data-action="pause"]')
        message = page.wait_for(f"{q('#message.error')}?.textContent",
                                what="the refusal shown")
        assert "wrong token" in message
        assert not paused(settings, partition)


def test_the_page_of_a_node_without_a_token_has_no_buttons(web_settings, partition, browser):
    settings = web_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{settings.http_port}/")
        page.wait_for(has(f'tr[data-queue="{partition}/default"]'), what="the queue row")
        assert page.evaluate(f"!{q('#readonly')}.hidden")
        assert page.evaluate("document.querySelectorAll('button').length") == 0
        assert page.evaluate(f"{q('#interval')}.textContent") == "10"  # the default refresh


def test_screenshot_of_a_busy_cluster(web_settings, out, browser, tmp_path):
    suffix = uuid.uuid4().hex[:4]
    billing, emails, reports = (f"{n}-{suffix}" for n in ("billing", "emails", "reports"))
    settings = web_settings(
        partitions={billing: {"default": 4, "invoices": 2}, emails: {"default": 3},
                    reports: {"default": 1}},
        http_token=TOKEN, node_name=f"web-1-{suffix}", shutdown_timeout=1.0)
    # A second node, without a page of its own, serves two of the partitions too.
    other = web_settings(partitions={billing: {"default": 2}, emails: {"default": 1}},
                         system_exchange_prefix=settings.system_exchange_prefix,
                         http_port=None, node_name=f"web-2-{suffix}", shutdown_timeout=1.0)
    # (A short shutdown_timeout: the minute-long jobs are killed at the end, not waited for.)
    try:
        with Node(settings), Node(other):
            for _ in range(3):
                Record.create({"out": out, "sleep": 60}).enqueue(billing)
            for _ in range(2):
                Record.create({"out": out, "sleep": 60}).enqueue(emails)
            for _ in range(60):
                Record.create({"out": out, "sleep": 0.3}).enqueue(billing, "invoices")
            Fail.create({"out": out}).enqueue(reports)
            _publish_garbage(reports)
            roger.pause(emails, "default", settings=settings)
            for _ in range(4):
                Record.create({"out": out}).enqueue(emails)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{settings.http_port}/?refresh=1")
            page.type("#token", TOKEN)
            assert page.evaluate(f"{q('#interval')}.textContent") == "1"  # as ?refresh asked
            # Two refreshes at least, so the rates cover some seconds.
            page.wait_for(f"{q('[data-card=dones] .value')}.textContent !== '–'",
                          timeout=60, what="the rates")
            page.wait_for("document.querySelectorAll('tr[data-job]').length === 5",
                          what="the five long jobs on the page")
            assert page.evaluate("document.querySelectorAll('tr[data-node]').length") == 2
            rejected = q(f'tr[data-queue="{reports}/default"] [data-count=rejected]')
            page.wait_for(f"{rejected}.textContent === '1'", what="the rejected message")
            shot = page.screenshot(tmp_path / "status-page.png")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("ROGER_UPDATE_SCREENSHOT"):
                shutil.copy(shot, ROOT / "docs" / "status-page.png")
            page.type("#filter", "reports")
            page.wait_for("document.querySelectorAll('[data-partition]').length === 1",
                          what="the filter to leave one partition")
            assert page.evaluate(f"{has(f'[data-partition={json.dumps(reports)}]')}")
    finally:
        for name in (billing, emails, reports):
            delete_partition(name)
        delete_queues(queue_names(billing, ["invoices"], [1]))
