"""metrics: what Prometheus metrics cost on the hot path (issue 16: at most 3 % of no-op jobs/s).

The throughput benchmark's workload (N no-op jobs enqueued first, drained by
1 partition x 1 queue x 4 workers, quorum queue), run interleaved by:

- `roger, metrics off`: the default (`metrics_port` unset);
- `roger, metrics on`: `metrics_port` set and ``/metrics`` scraped every
  `SCRAPE_EVERY` s during the run (15x a usual Prometheus interval): roger's
  design, counts sent up the process tree (`roger.metrics`);
- `multiprocess mode`: the alternative, `prometheus_client`'s multiprocess
  mode counting in each consumer (`benchmarks.peers.multiproc_tally`, a
  prototype), also scraped.

Also, in a subprocess: the microseconds one settlement's counting costs in
either design (`multiproc_tally.micro`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import urllib.request
from typing import Any

from benchmarks.common import Config
from benchmarks.procs import Spawned, python
from benchmarks.report import Metric, Ratio, Section, progress
from benchmarks.systems import RogerSystem
from benchmarks.throughput import METRICS, run_systems

OFF, ON, MP = "roger, metrics off", "roger, metrics on", "multiprocess mode"
SCRAPE_EVERY = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MeteredRoger(RogerSystem):
    """A roger node with `metrics_port` set, scraped by a thread of the driver while it runs."""

    def __init__(self, cfg: Config, tag: str, module: str = "benchmarks.peers.roger_node",
                 label: str = ON) -> None:
        self.port = _free_port()
        super().__init__(cfg, tag, settings={"metrics_port": self.port})
        self.label, self.module = label, module
        self.stopped = threading.Event()
        self.scrapes = 0

    def start(self, log: str) -> Spawned:
        path = os.path.join(self.state_dir, "settings.json")
        with open(path, "w") as f:
            json.dump(self.fields, f)
        self.proc = Spawned(python("-m", self.module, path), stdin=True, log=log)
        threading.Thread(target=self._scrape, daemon=True).start()
        return self.proc

    def _scrape(self) -> None:
        url = f"http://127.0.0.1:{self.port}/metrics"
        while not self.stopped.wait(SCRAPE_EVERY):
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                pass  # not listening yet, or stopping

    def cleanup(self) -> None:
        self.stopped.set()
        super().cleanup()


def factories(cfg: Config) -> list[tuple[str, Any]]:
    return [
        (OFF, lambda c, tag: RogerSystem(c, tag, queue_type="quorum")),
        (ON, lambda c, tag: MeteredRoger(c, tag)),
        (MP, lambda c, tag: MeteredRoger(c, tag, "benchmarks.peers.multiproc_tally", MP)),
    ]


def micro() -> dict[str, float]:
    """µs of counting per settlement, both designs (fresh interpreter: the env var rules)."""
    out = subprocess.run(python("-m", "benchmarks.peers.multiproc_tally", "--micro"),
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


def run(cfg: Config, workdir: str) -> Section:
    n = cfg.throughput_jobs
    cost = micro()
    progress(f"metrics: counting one settlement costs {cost['tally']:.2f} µs (roger's tally), "
             f"{cost['multiprocess']:.2f} µs (multiprocess mode)")
    samples = run_systems(cfg, workdir, "metrics", n, factories(cfg))
    ratios = [Ratio(ON, OFF, "steady", 0.97), Ratio(ON, OFF, "from_start", 0.97),
              Ratio(ON, OFF, "cpu_sut"), Ratio(ON, OFF, "cpu_consumer"),
              Ratio(MP, OFF, "steady"), Ratio(MP, OFF, "cpu_sut"), Ratio(MP, OFF, "cpu_consumer")]
    notes = [
        f"{n:,} no-op jobs, enqueued first, drained by 1 partition x 1 queue x 4 workers "
        "(quorum queue), as in the throughput benchmark; the three systems interleaved in "
        "every repeat. Issue 16's goal: metrics on costs at most 3 % of steady no-op "
        "throughput (ratio >= 0.97).",
        f"*metrics on*: `metrics_port` set, `/metrics` scraped every {SCRAPE_EVERY:g} s by "
        "the driver during the run. Consumers count into a dict and send deltas up the "
        "process tree once a second (`roger.metrics`); the root keeps the totals.",
        "*multiprocess mode*: the alternative, a prototype "
        "(`benchmarks/peers/multiproc_tally.py`): each consumer counts into "
        "`prometheus_client` metrics in multiprocess mode (memory-mapped files per process).",
        f"Counting one settlement (a counter and a duration), in one process: "
        f"{cost['tally']:.2f} µs with roger's tally, {cost['multiprocess']:.2f} µs in "
        "multiprocess mode.",
    ]
    notes.append("*CPU µs/job, consumer*: the CPU time of the node's consumer process alone per "
                 "job, over the steady window: where the counting happens, and a figure far "
                 "less noisy than the whole tree's (workers, root, metrics server included).")
    metrics = [*METRICS[:3], Metric("cpu_consumer", "CPU µs/job, consumer"), *METRICS[3:]]
    return Section("metrics", "Metrics overhead (issue 16)", samples, metrics, ratios, notes)
