"""Periodic jobs on real nodes: each slot once across nodes, kills and restarts; checks; listing.

Scaled down with the cron seconds field (six fields, seconds first): an
entry every 2 seconds stands for the every-minute entry of the goal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from testjobs import events

import roger
from roger import Node
from roger.partition.periodic import InvalidPeriodic
from tests.helpers import wait_for
from tests.roger.support import child_env, queue_depth

STEP = 2  # seconds between slots of the scaled-down entries


def entry(partition: str, out: str, cron: str = f"*/{STEP} * * * * *", **more) -> dict:
    return {"name": "tick", "cron": cron, "job": "testjobs:Record", "args": {"out": out},
            "partition": partition, **more}


def fired(out: str) -> list[int]:
    """The slots (epoch seconds) whose job ran, from the job ids, in order, repeats kept."""
    return sorted(int(e["id"].rsplit(":", 1)[1]) for e in events(out, "end"))


def every_slot_once(out: str, at_least: int) -> list[int] | None:
    """The fired slots if there are `at_least`, each once and none skipped; else None."""
    slots = fired(out)
    if len(slots) < at_least:
        return None
    return slots if slots == list(range(slots[0], slots[0] + STEP * len(slots), STEP)) else None


def active_coordinator(nodes: list[Node], partition: str) -> int | None:
    """The pid of the coordinator that knows it is the active one (None: none knows yet)."""
    for node in nodes:
        running = node.status()["running"].get(partition, {})
        if running.get("coordinator", {}).get("active"):
            return running.get("coordinator_pid")
    return None


def test_each_slot_fires_once_across_three_nodes_with_the_coordinator_killed_twice(
        partition, make_settings, nodes, out):
    settings = [make_settings(partitions={partition: {"default": 1}},
                              periodic=[entry(partition, out)]) for _ in range(3)]
    cluster = [nodes(s) for s in settings]
    wait_for(lambda: fired(out), timeout=20, what="a first slot")
    killed: list[int] = []
    for _ in range(2):
        pid = wait_for(lambda: (p := active_coordinator(cluster, partition)) not in killed and p,
                       timeout=20, what="the active coordinator")
        seen = len(fired(out))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        # Two more slots after the kill: a standby took over and fired them.
        wait_for(lambda s=seen: len(fired(out)) >= s + 2, timeout=20, what="slots after a kill")
    target = len(fired(out)) + 1
    slots = wait_for(lambda: every_slot_once(out, target), timeout=20,
                     what=f"each slot once, none skipped (fired: {fired(out)})")
    assert set(Counter(fired(out)).values()) == {1}, "a slot fired twice"
    assert len(slots) >= 5
    assert active_coordinator(cluster, partition) not in killed


def test_dormant_partitions_fire_from_the_watcher_and_hand_over_without_a_double(
        partition, make_settings, nodes, out):
    # Idle after half a second: between slots the partition falls asleep (the
    # watcher takes the coordinator) and each job wakes it (the partition's
    # coordinator takes it back).
    for _ in range(2):
        nodes(make_settings(partitions={partition: {"default": 1}}, idle_after=0.5,
                            periodic=[entry(partition, out)]))
    wait_for(lambda: every_slot_once(out, 5), timeout=30, what="five slots, each once")
    assert set(Counter(fired(out)).values()) == {1}


def test_slots_missed_while_the_whole_cluster_was_down_fire_once(
        partition, make_settings, nodes, out):
    # A first run registers the entry (its slots start then); this cron never
    # fires during the test.
    first = nodes(make_settings(partitions={partition: {"default": 1}},
                                periodic=[entry(partition, out, cron="0 0 1 1 *")]))
    wait_for(lambda: roger.info.periodic(partition), what="the entry registered")
    first.stop(timeout=15)
    # Down across three slots: the next three whole seconds.
    down = int(time.time())
    missed = [down + 1, down + 2, down + 3]
    wait_for(lambda: time.time() > missed[-1] + 0.2, what="three slots to pass")
    cron = ",".join(str(s % 60) for s in missed) + " * * * * *"
    nodes(make_settings(partitions={partition: {"default": 1}},
                        periodic=[entry(partition, out, cron=cron)]))
    wait_for(lambda: fired(out), what="the catch-up")
    wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="the queue drained")
    assert fired(out) == [missed[-1]]  # once, as the latest missed slot
    [listed] = roger.info.periodic(partition)
    assert listed.last_run.timestamp() == missed[-1]


@pytest.mark.parametrize(("bad", "says"), [
    ({"cron": "0 25 * * *"}, "hour field '25'"),
    ({"job": "testjobs:NoSuchJob"}, "unknown job 'testjobs:NoSuchJob'"),
    ({"partition": "nowhere"}, "unknown partition 'nowhere'"),
])
def test_a_bad_entry_stops_the_node_at_start_naming_it(partition, make_settings, out, bad,
                                                       says):
    node = Node(make_settings(partitions={partition: {"default": 1}},
                              periodic=[entry(partition, out, cron="@daily") | bad]))
    with pytest.raises(InvalidPeriodic) as err:
        node.start()
    assert "periodic entry 'tick'" in str(err.value) and says in str(err.value)
    assert node.pid is None


def test_a_bad_entry_makes_the_supervisor_exit_with_the_message(partition, tmp_path, out):
    periodic = json.dumps([entry(partition, out, cron="61 * * * *")])
    done = subprocess.run(
        [sys.executable, "-m", "roger.supervisor"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env=child_env(ROGER_PARTITIONS=json.dumps({partition: {"default": 1}}),
                                    ROGER_IMPORTS='["testjobs"]', ROGER_PERIODIC=periodic,
                                    ROGER_STATE_DIR=str(tmp_path / "state")))
    assert done.returncode != 0
    assert "periodic entry 'tick'" in done.stderr and "minute field '61'" in done.stderr


def test_info_and_the_cli_list_entries_with_last_and_next_run(
        partition, make_settings, nodes, out, tmp_path):
    nightly = entry(partition, out, cron="0 3 * * *", timezone="Europe/Amsterdam",
                    queue="reports") | {"name": "nightly"}
    settings = make_settings(partitions={partition: {"default": 1}},
                             periodic=[entry(partition, out), nightly])
    nodes(settings)
    wait_for(lambda: fired(out), timeout=20, what="a slot")
    listed = {e.name: e for e in roger.info.periodic(partition)}
    assert set(listed) == {"tick", "nightly"}
    tick = listed["tick"]
    assert tick.last_run is not None and tick.next_run > tick.last_run
    assert listed["nightly"]["last_run"] is None
    night = listed["nightly"].next_run.astimezone(ZoneInfo("Europe/Amsterdam"))
    assert (night.hour, night.minute) == (3, 0)
    env = child_env(ROGER_STATE_DIR=str(settings.state_dir))
    table = subprocess.run([sys.executable, "-m", "roger", "periodic", partition],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "NEXT RUN" in table.stdout and "nightly" in table.stdout and "0 3 * * *" in table.stdout
    as_json = subprocess.run([sys.executable, "-m", "roger", "periodic", partition, "--json"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    by_name = {e["name"]: e for e in json.loads(as_json.stdout)}
    assert by_name["nightly"]["next_run"] == listed["nightly"].next_run.isoformat()


def test_a_slot_whose_queue_key_is_held_is_skipped(partition, make_settings, nodes, out):
    # Each job holds the key "report" for 3 s; slots come every 2 s.
    keyed = entry(partition, out) | {"job": "testjobs:Keyed",
                                     "args": {"out": out, "qkey": "report", "sleep": 3}}
    nodes(make_settings(partitions={partition: {"default": 2}}, periodic=[keyed]))
    wait_for(lambda: len(fired(out)) >= 2, timeout=30, what="two keyed slots")
    slots = fired(out)
    assert all(b - a >= 2 * STEP for a, b in zip(slots, slots[1:], strict=False))  # skipped
    runs = sorted((s["t"], e["t"]) for s in events(out, "start") for e in events(out, "end")
                  if s["id"] == e["id"])
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(runs, runs[1:], strict=False))
