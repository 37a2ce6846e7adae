"""Every process dies with its parent: no orphans, whichever supervisor is SIGKILLed."""

import os
import signal

from supervision import ChildSpec, Supervisor
from tests.supervision.support import Proc, sleep_forever, tree_pids, wait_dead


def three_levels(events=None):
    """root -> [mid -> [w0, w1, w2], a, b]"""
    mid = Supervisor([ChildSpec(f"w{i}", sleep_forever) for i in range(3)], name="mid")
    return Supervisor([ChildSpec("mid", mid.run, type="supervisor"),
                       ChildSpec("a", sleep_forever), ChildSpec("b", sleep_forever)],
                      name="root", on_event=events)


def test_sigkill_of_the_root_leaves_no_descendant(trees):
    handle = trees.start(three_levels())
    procs = trees.watch(tree_pids(handle).values())
    assert len(procs) == 6 and all(p.alive() for p in procs)

    os.kill(handle.pid, signal.SIGKILL)

    wait_dead(procs, 2)  # gone, or a zombie waiting for a reaper
    assert handle.join(5) == -signal.SIGKILL


def test_sigkill_of_a_middle_supervisor_takes_its_subtree_only(trees):
    events = trees.events()
    handle = trees.start(three_levels(events))
    before = tree_pids(handle)
    trees.watch(before.values())
    subtree = [Proc(pid) for path, pid in before.items() if path[0] == "mid"]
    assert len(subtree) == 4 and all(p.alive() for p in subtree)

    os.kill(before[("mid",)], signal.SIGKILL)

    wait_dead(subtree, 2)
    assert events.wait1("exited", "mid").reason == "signal SIGKILL"
    events.wait("started", "mid", count=2)  # and the root restarted it
    after = tree_pids(handle)
    trees.watch(after.values())
    assert (after[("a",)], after[("b",)]) == (before[("a",)], before[("b",)])
    assert all(after[path] != before[path] for path in before if path[0] == "mid")
    assert len(after) == 6


def test_each_child_leads_its_own_process_group(trees):
    """So a terminal's Ctrl-C (SIGINT to the foreground group) reaches the root alone."""
    events = trees.events()
    handle = trees.start(three_levels(events))
    pids = tree_pids(handle)
    procs = trees.watch(pids.values())
    assert all(os.getpgid(pid) == pid for pid in [handle.pid, *pids.values()])

    os.killpg(handle.pid, signal.SIGINT)

    assert handle.join(10) == 0
    # the workers died of the SIGTERM of an orderly shutdown, not of the SIGINT
    terminated = events.matching("terminated", supervisor="root")
    assert [(e.child_id, e.reason) for e in terminated] == [
        ("b", "signal SIGTERM"), ("a", "signal SIGTERM"), ("mid", "normal")]
    wait_dead(procs, 2)
