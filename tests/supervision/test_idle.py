"""An idle tree costs no CPU: the loops block on their children, they never poll."""

import time

from supervision import ChildSpec, Supervisor
from tests.supervision.support import CLK_TCK, ready_then_sleep, tree_pids


def test_an_idle_tree_of_50_children_uses_under_1_percent_cpu(trees):
    mids = [Supervisor([ChildSpec(f"w{j}", ready_then_sleep, notify_ready=True)
                        for j in range(10)], name=f"mid{i}") for i in range(5)]
    root = Supervisor([ChildSpec(f"mid{i}", mid.run, type="supervisor")
                       for i, mid in enumerate(mids)], name="root")
    handle = trees.start(root)  # returns once every worker reported ready
    procs = [trees.procs[-1], *trees.watch(tree_pids(handle).values())]
    assert len(procs) == 1 + 5 + 50

    before = sum(p.cpu_ticks() for p in procs)
    time.sleep(5.0)  # the measurement window
    used = sum(p.cpu_ticks() for p in procs) - before

    assert all(p.alive() for p in procs)
    assert used / CLK_TCK / 5.0 < 0.01, f"{used} ticks of CPU in 5 s"
