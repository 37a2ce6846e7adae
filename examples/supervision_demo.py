"""A supervision tree: a worker crashes twice, is restarted each time, then the tree stops.

    .venv/bin/python examples/supervision_demo.py
"""

import logging
import os
import sys
import tempfile
import time

from supervision import ChildSpec, Supervisor


def steady():
    """A worker that just runs (and dies of the SIGTERM of an orderly shutdown)."""
    while True:
        time.sleep(3600)


def flaky(runs_file):
    """Crashes (exit code 1) on its first two runs, then keeps running."""
    with open(runs_file, "a+") as f:
        f.write("run\n")
        f.seek(0)
        runs = len(f.readlines())
    if runs <= 2:
        time.sleep(0.5)
        print(f"    flaky (pid {os.getpid()}): something went wrong, exiting", flush=True)
        sys.exit(1)
    steady()


def report(event):
    """Called in the supervisor's process for every event it reports."""
    if event.kind in ("started", "exited", "terminated"):
        print(f"[{event.supervisor}] {event.child_id} (pid {event.pid}) {event.kind}"
              f"{': ' + event.reason if event.reason else ''}", flush=True)
    else:
        print(f"[{event.supervisor}] {event.kind} {event.child_id or ''}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(format="    log: %(message)s", level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Supervisor(
            [ChildSpec("steady", steady), ChildSpec("flaky", flaky, args=(f"{tmp}/runs",))],
            strategy="one_for_one", intensity=3, period=5.0, name="demo", on_event=report,
        )
        with tree.start() as handle:  # the supervisor runs in its own process
            while handle.which_children()[1].restarts < 2:
                time.sleep(0.1)
            for child in handle.which_children():
                print(f"  {child.id}: pid {child.pid}, {child.state}, "
                      f"restarted {child.restarts} times")
            print("stopping the tree")
        print(f"supervisor exited with code {handle.exitcode}")
