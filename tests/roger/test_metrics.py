"""Prometheus metrics (SPEC section 8): a real node serves them, prometheus_client parses them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kombu
import pytest
import testjobs
from prometheus_client.parser import text_string_to_metric_families

import roger
from roger import Node
from roger.amqp import topology
from roger.metrics import Histogram
from roger.node.exposition import Exposition, respond
from roger.node.metrics_server import MAX_CONNECTIONS
from roger.node.metrics_store import Snapshot
from tests.helpers import ROOT, wait_for
from tests.roger.support import BROKER, delete_delay_levels, delete_queues
from tests.roger.websupport import queue_of

DASHBOARD = ROOT / "docs" / "grafana-roger.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample the node serves: (sample name, its labels) -> value."""
    status, body = get(port)
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def jobs_total(samples: dict, partition: str) -> dict[tuple[str, str], float]:
    """``(job, outcome) -> count`` of `partition`'s default queue (outcomes still at 0 left out)."""
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "roger_jobs_total" and d["partition"] == partition:
            assert d["queue"] == "default"
            if v:
                out[(d["job"], d["outcome"])] = v
    return out


def publish_garbage(partition: str) -> None:
    with kombu.Connection(BROKER) as conn:
        conn.default_channel.basic_publish(
            conn.default_channel.prepare_message(b"\x00 not a job", content_type="text/plain"),
            exchange="", routing_key=f"{partition}-default")


def name(cls: type) -> str:
    return f"testjobs:{cls.__qualname__}"


def test_metrics_after_a_known_workload(make_settings, partition, out):
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 4, "other": 0}},
                             metrics_port=port, retry_levels=[1])
    with Node(settings):
        for _ in range(3):
            testjobs.Record.create({"out": out}).enqueue(partition)
        testjobs.Raise.create({"out": out, "raise": "ValueError"}).enqueue(partition)
        testjobs.Fail.create({"out": out}).enqueue(partition)  # retried once, then buried
        publish_garbage(partition)
        testjobs.Hang.create({"out": out}).enqueue(partition)
        testjobs.ExitHard.create({"out": out, "code": 3}).enqueue(partition)
        victim = testjobs.WaitForKill.create({"out": out})
        victim.enqueue(partition)
        for _ in range(2):  # "other" has no worker: they wait, ready
            testjobs.Record.create({"out": out}).enqueue(partition, queue="other")

        wait_for(lambda: victim.id in {e["id"] for e in testjobs.events(out, "start")},
                 what="the job to cancel started")
        wait_for(lambda: value(scrape(port), "roger_jobs_running", partition=partition,
                               queue="default") == 1, timeout=30, what="one job running")
        roger.cancel(partition, victim.id)

        expected = {
            (name(testjobs.Record), "done"): 3,
            (name(testjobs.Raise), "failed"): 1,
            (name(testjobs.Fail), "retried"): 1,
            (name(testjobs.Fail), "buried"): 1,
            ("", "rejected"): 1,
            (name(testjobs.WaitForKill), "cancelled"): 1,
            (name(testjobs.Hang), "timeout"): 1,
            (name(testjobs.ExitHard), "crashed"): 1,
        }
        wait_for(lambda: jobs_total(scrape(port), partition) == expected, timeout=60,
                 what=f"roger_jobs_total == {expected}")

        def gauges_settled():
            s = scrape(port)
            return (value(s, "roger_jobs_running", partition=partition, queue="default") == 0
                    and value(s, "roger_queue_messages", partition=partition, queue="default",
                              state="unacked") == 0
                    and value(s, "roger_queue_messages", partition=partition, queue="other",
                              state="ready") == 2
                    and value(s, "roger_queue_messages", partition=partition, queue="default",
                              state="buried") == 1) and s
        samples = wait_for(gauges_settled, timeout=30, what="gauges after the workload")

    m = dict(partition=partition, queue="default")
    assert value(samples, "roger_queue_messages", **m, state="ready") == 0
    assert value(samples, "roger_queue_messages", **m, state="rejected") == 1
    assert value(samples, "roger_queue_messages", **m, state="delayed") == 0
    assert value(samples, "roger_jobs_running", partition=partition, queue="other") == 0
    assert value(samples, "roger_workers", partition=partition, queue="other") == 0
    assert 1 <= value(samples, "roger_workers", **m) <= 4
    assert value(samples, "roger_partition_waiting", partition=partition) == 0
    # A job's outcomes all exist once it ran: the first failure of a kind shows as 0 -> 1.
    assert value(samples, "roger_jobs_total", **m, job=name(testjobs.Record),
                 outcome="buried") == 0
    assert value(samples, "roger_jobs_total", **m, job="", outcome="done") is None
    # One duration per run: the retried job ran twice, a rejected message never ran.
    runs = {testjobs.Record: 3, testjobs.Raise: 1, testjobs.Fail: 2, testjobs.WaitForKill: 1,
            testjobs.Hang: 1, testjobs.ExitHard: 1}
    for cls, n in runs.items():
        labels = dict(m, job=name(cls))
        assert value(samples, "roger_job_duration_seconds_count", **labels) == n, cls
        assert value(samples, "roger_job_duration_seconds_bucket", **labels, le="+Inf") == n
    hang = dict(m, job=name(testjobs.Hang))
    assert value(samples, "roger_job_duration_seconds_sum", **hang) >= 0.5
    assert value(samples, "roger_job_duration_seconds_bucket", **hang, le="0.25") == 0
    assert not any(dict(labels).get("job") == "" for (n, labels) in samples
                   if n.startswith("roger_job_duration"))


def test_counters_survive_a_queue_going_idle_and_waking(make_settings, partition, out):
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 2}}, metrics_port=port,
                             idle_after=1.0)
    with Node(settings) as node:
        for _ in range(2):
            testjobs.Record.create({"out": out}).enqueue(partition)
        done = {"partition": partition, "queue": "default", "job": name(testjobs.Record),
                "outcome": "done"}
        wait_for(lambda: value(scrape(port), "roger_jobs_total", **done) == 2, timeout=30,
                 what="2 done")
        # The consumer gives its queue back and the whole partition goes dormant.
        wait_for(lambda: node.status()["running"][partition].get("idle"), timeout=30,
                 what="the partition dormant")
        # Metrics lag by up to a second or two (reports, the scrape's cache).
        samples = wait_for(lambda: (s := scrape(port)) and value(
            s, "roger_workers", partition=partition, queue="default") == 0 and s,
            timeout=15, what="no worker left")
        assert value(samples, "roger_jobs_total", **done) == 2
        assert value(samples, "roger_jobs_running", partition=partition, queue="default") == 0

        testjobs.Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: value(scrape(port), "roger_jobs_total", **done) == 3, timeout=30,
                 what="3 done after the queue woke up")


def test_counters_survive_a_consumer_killed_outright(make_settings, partition, out):
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 2}}, metrics_port=port)
    done = {"partition": partition, "queue": "default", "job": name(testjobs.Record),
            "outcome": "done"}
    with Node(settings) as node:
        for _ in range(2):
            testjobs.Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: value(scrape(port), "roger_jobs_total", **done) == 2, timeout=30,
                 what="2 done")
        consumer = node.status()["running"][partition]["queues"]["default"]["pid"]
        os.kill(consumer, signal.SIGKILL)
        wait_for(lambda: node.status()["running"][partition]["queues"]["default"].get("pid")
                 not in (None, consumer), timeout=30, what="the consumer restarted")
        assert value(scrape(port), "roger_jobs_total", **done) == 2
        testjobs.Record.create({"out": out}).enqueue(partition)
        wait_for(lambda: value(scrape(port), "roger_jobs_total", **done) == 3, timeout=30,
                 what="3 done after the restart")


def test_a_job_waiting_for_its_retry_counts_as_delayed(make_settings, partition, out):
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 1}}, metrics_port=port,
                             retry_levels=[20])
    # The retry queue exists before the node first looks (it is looked for
    # again only every MISSING_RECHECK seconds once found missing).
    with kombu.Connection(BROKER) as conn:
        topology.declare_queues(conn.default_channel, settings, partition, "default")
    try:
        with Node(settings):
            testjobs.Fail.create({"out": out}).enqueue(partition)
            delayed = dict(partition=partition, queue="default", state="delayed")
            wait_for(lambda: value(scrape(port), "roger_queue_messages", **delayed) == 1,
                     timeout=15, what="the retried job counted as delayed")
            assert value(scrape(port), "roger_queue_messages", partition=partition,
                         queue="default", state="ready") == 0
    finally:
        delete_queues([f"{partition}-default.retry.20"])


def test_a_partition_that_cannot_start_shows_as_waiting(make_settings, partition):
    # A classic queue where roger declares a quorum one: the declaration fails.
    with kombu.Connection(BROKER) as conn:
        conn.channel().queue_declare(f"{partition}-default", durable=True, auto_delete=False)
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 1}}, queue_type="quorum",
                             metrics_port=port)
    with Node(settings):
        wait_for(lambda: value(scrape(port), "roger_partition_waiting",
                               partition=partition) == 1, timeout=30, what="waiting = 1")
        with kombu.Connection(BROKER) as conn:
            conn.channel().queue_delete(f"{partition}-default")
        wait_for(lambda: value(scrape(port), "roger_partition_waiting",
                               partition=partition) == 0, timeout=60,
                 what="waiting = 0 once it started")


def test_metrics_are_off_by_default(make_settings, partition):
    assert roger.Settings().metrics_port is None
    with Node(make_settings(partitions={partition: {"default": 1}})) as node:
        assert listening_ports(tree(node.pid)) == set()


def test_every_metric_of_the_grafana_dashboard_is_served(make_settings, partition, out):
    names = dashboard_metrics()
    assert names, "the dashboard names no roger metric"
    for expr in dashboard_exprs():
        depth = 0
        for char in expr:  # a query with unbalanced brackets would not load
            depth += (char in "({[") - (char in ")}]")
            assert depth >= 0, expr
        assert depth == 0, expr
    port = free_port()
    with Node(make_settings(partitions={partition: {"default": 1}}, metrics_port=port)):
        testjobs.Record.create({"out": out}).enqueue(partition)
        served = wait_for(lambda: (s := {n for n, _ in scrape(port)})
                          and "roger_job_duration_seconds_bucket" in s and s, timeout=30,
                          what="a job's duration served")
    assert names - served == set()


def test_hostile_clients_do_not_stop_the_metrics_server(make_settings, partition):
    port = free_port()
    with Node(make_settings(partitions={partition: {"default": 1}}, metrics_port=port)):
        lorises = []
        for _ in range(5):  # slow loris: half a request line, then silence
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metr")
            lorises.append(s)
        assert get(port, "/../../etc/passwd")[0] == 404
        assert get(port, "/nope")[0] == 404
        assert get(port, "/" + "x" * 70_000)[0] in (404, 414)
        assert scrape(port)  # served while the lorises hang on
        # A flood beyond the limit is turned away at once, and serving goes on.
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(MAX_CONNECTIONS + 5)]
        refused = 0
        for s in flood[-5:]:
            s.settimeout(5)
            try:
                refused += s.recv(1) == b""
            except TimeoutError:
                pass
        assert refused >= 1
        for s in flood + lorises:
            s.close()
        wait_for(lambda: _scrapes(port), timeout=30, what="serving again after the flood")


def test_a_taken_metrics_port_fails_the_node_at_start(make_settings, partition):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(make_settings(partitions={partition: {"default": 1}}, metrics_port=port))
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            node.start()


# ---------------------------------------------------------------------- helpers


def _scrapes(port: int) -> bool:
    try:
        return bool(scrape(port))
    except OSError:
        return False


def dashboard_exprs() -> list[str]:
    """Every query of the Grafana dashboard: its panels' and its variables'."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [v.get("query", {}).get("query", "") if isinstance(v.get("query"), dict)
              else v.get("query", "") for v in board.get("templating", {}).get("list", [])]
    return exprs


def dashboard_metrics() -> set[str]:
    """The metric names in every query of the Grafana dashboard."""
    return {m for e in dashboard_exprs() for m in re.findall(r"\broger_[a-z_]+\b", e)}


def tree(pid: int) -> set[int]:
    """`pid` and all its descendants."""
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports that these processes listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_listening_ports_sees_a_listening_node(make_settings, partition):
    """The check of the off-by-default test would see a port if there were one."""
    port = free_port()
    with Node(make_settings(partitions={partition: {"default": 1}}, metrics_port=port)) as node:
        wait_for(lambda: port in listening_ports(tree(node.pid)), timeout=15,
                 what="the metrics port in the node's tree")


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket():
    hist = Histogram()
    for seconds in (0.005, 0.0051, 7200.0):
        hist.observe(seconds)
    assert hist.counts[0] == 1  # le="0.005" holds 0.005 itself, as Prometheus means it
    assert hist.counts[1] == 1
    assert hist.counts[-1] == 1  # +Inf
    assert hist.total == pytest.approx(7200.0101)


def test_the_exposition_mounts_in_another_http_server(make_settings, partition):
    """How the status page serves /metrics on its own port: `respond` in its handler."""
    snap = Snapshot("n1", jobs={(partition, "default", "myapp:Job", "done"): 7},
                    partitions={partition: {"default": 2}})
    exposition = Exposition(make_settings(), ask_root=lambda payload, timeout: snap)

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            respond(self, exposition)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        samples = scrape(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert value(samples, "roger_jobs_total", partition=partition, queue="default",
                 job="myapp:Job", outcome="done") == 7
    assert value(samples, "roger_queue_messages", partition=partition, queue="default",
                 state="ready") == 0


def test_the_status_page_serves_metrics_on_its_port_and_rates_from_the_same_counters(
        web_settings, partition, out):
    # metrics_port == http_port: one server, the page's, serves /metrics; the
    # page's done and failed rates come from the counters it exposes (a job
    # that fails without retry is neither buried nor rejected: only a counter
    # sees it).
    port = free_port()
    settings = web_settings(partitions={partition: {"default": 2}}, http_port=port,
                            metrics_port=port)
    with Node(settings):
        assert get(port, "/api/state")[0] == 200  # the first sample of the rate window
        jobs = [testjobs.Record.create({"out": out}) for _ in range(3)]
        jobs.append(testjobs.Raise.create({"raise": "ValueError"}))
        roger.enqueue_many(jobs, partition)
        counts = wait_for(lambda: (c := jobs_total(scrape(port), partition))
                          and c.get(("testjobs:Record", "done")) == 3
                          and c.get(("testjobs:Raise", "failed")) == 1 and c,
                          what="3 done and 1 failed in /metrics")
        assert sum(counts.values()) == 4

        def rates() -> dict | None:
            q = queue_of(json.loads(get(port, "/api/state")[1]), partition)
            return q if q and q["done_per_second"] and q["failed_per_second"] else None
        queue = wait_for(rates, timeout=30, what="done and failed rates on the page")
        assert queue["done_per_second"] > 0 and queue["failed_per_second"] > 0


def test_jobs_delayed_with_delay_count_as_delayed_until_due(make_settings, partition, out):
    # Its own prefix: the delay levels (and the jobs in them) go with the test.
    prefix = f"m{partition}"
    port = free_port()
    settings = make_settings(partitions={partition: {"default": 1}}, metrics_port=port,
                             system_exchange_prefix=prefix)
    try:
        with Node(settings):
            roger.enqueue_many([testjobs.Record.create({"out": out}) for _ in range(2)],
                               partition, delay=3600)
            delayed = dict(partition=partition, queue="default", state="delayed")
            wait_for(lambda: value(scrape(port), "roger_queue_messages", **delayed) == 2,
                     timeout=15, what="the two delayed jobs counted")
            for node in roger.info.partitions(settings=settings).values():
                assert node["running"][partition]["default"]["delayed"] == 2  # the same figure
    finally:
        delete_delay_levels(prefix)
        delete_queues([], [f"{prefix}.system", f"{prefix}.{partition}.events"])
