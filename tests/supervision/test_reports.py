"""Exit reasons, as events and as log lines, name the child and the code or signal."""

import logging
import os
import signal

from supervision import ChildSpec, Supervisor
from tests.supervision.support import flag, sleep_forever


def exit_once(flag_path, code):
    """Exit with `code` on the first run only (no restart loop), then keep running."""
    if flag(flag_path):
        raise SystemExit(code)
    sleep_forever()


def test_exit_reasons_in_events_and_logs(trees, tmp_path):
    logfile = tmp_path / "supervision.log"
    logger = logging.getLogger("supervision")
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    events = trees.events()
    sup = Supervisor([ChildSpec("victim", sleep_forever),
                      ChildSpec("quitter", exit_once, args=(tmp_path / "once", 3)),
                      ChildSpec("stopped", sleep_forever)],
                     name="reporter", on_event=events)
    try:
        handle = trees.start(sup)  # the forked supervisor keeps the handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
    victim = handle.which_children()[0].pid

    os.kill(victim, signal.SIGKILL)
    handle.terminate_child("stopped")

    killed = events.wait1("exited", "victim")
    assert (killed.pid, killed.exitcode, killed.reason, killed.signal) == (
        victim, -9, "signal SIGKILL", "SIGKILL")
    quitter = events.wait1("exited", "quitter")
    assert (quitter.exitcode, quitter.reason, quitter.signal) == (3, "exit code 3", None)
    stopped = events.wait1("terminated", "stopped")
    assert (stopped.reason, stopped.signal) == ("signal SIGTERM", "SIGTERM")
    events.wait("started", "victim", count=2)

    log = logfile.read_text().splitlines()
    assert f"WARNING reporter: child 'victim' (pid {victim}) exited: signal SIGKILL" in log
    assert (f"WARNING reporter: child 'quitter' (pid {quitter.pid}) exited: exit code 3"
            in log)
    assert f"INFO reporter: child 'stopped' (pid {stopped.pid}) terminated: signal SIGTERM" in log
    assert any(line.startswith("WARNING reporter: restarting child 'victim'") for line in log)
