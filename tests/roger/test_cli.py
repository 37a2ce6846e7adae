"""The `roger` command line: help, `ctl` against a running node, exit statuses, tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import roger
from roger.cli import main
from roger.cli.format import jobs_text, partitions_text, status_text, table
from tests.roger.support import BROKER, child_env

COMMANDS = ("run", "ctl", "enqueue", "info", "cancel", "pause", "resume", "purge", "buried",
            "rejected")


def roger_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed entry point, as an operator runs it (`python -m roger`)."""
    return subprocess.run([sys.executable, "-m", "roger", *args], env=child_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_with_examples(tmp_path):
    done = roger_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in COMMANDS:
        assert f"\n    {command} " in done.stdout, command
    for command in (["ctl"], ["ctl", "reconfigure_partition"], ["info", "queued"],
                    ["pause"], ["run"]):
        text = subprocess.run([sys.executable, "-m", "roger", *command, "--help"],
                              env=child_env(), capture_output=True, text=True,
                              timeout=60).stdout
        assert "example" in text and f"roger {' '.join(command)}" in text, command


def test_ctl_status_json_against_a_running_node(node, partition, tmp_path):
    sock = str(node.settings.control_socket)
    done = roger_cli("ctl", "status", "--json", "--control-socket", sock, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["ok"] and status["node"] == node.settings.node_name
    assert status["running"][partition]["queues"]["default"]["consuming"]

    done = roger_cli("ctl", "status", "--control-socket", sock, cwd=tmp_path)
    assert done.returncode == 0
    assert f"node {node.settings.node_name}" in done.stdout
    assert partition in done.stdout and "CONSUMING" in done.stdout


def test_ctl_changes_the_node(node, partition, capsys):
    sock = str(node.settings.control_socket)
    assert main(["ctl", "reconfigure-partition", partition, '{"default": 2}',
                     "--control-socket", sock, "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["running"][partition]["queues"]["default"]["max_workers"] == 2
    assert node.status()["running"][partition]["queues"]["default"]["max_workers"] == 2


def test_errors_exit_non_zero(node, tmp_path):
    sock = str(node.settings.control_socket)
    done = roger_cli("ctl", "stop_partition", "nope", "--control-socket", sock, cwd=tmp_path)
    assert done.returncode == 1
    assert "partition 'nope' is not configured" in done.stderr

    done = roger_cli("ctl", "status", "--control-socket", str(tmp_path / "none.sock"),
                     cwd=tmp_path)
    assert done.returncode == 1 and "is the node running?" in done.stderr

    done = roger_cli("ctl", "start_partition", "p", "[1]", "--control-socket", sock,
                     cwd=tmp_path)
    assert done.returncode == 2 and "must be a JSON object" in done.stderr


def test_run_refuses_to_take_a_live_nodes_socket(node, tmp_path):
    done = roger_cli("run", "--control-socket", str(node.settings.control_socket),
                     cwd=tmp_path)
    assert done.returncode == 1
    assert "another node is serving the control socket" in done.stderr
    assert node.status()["node"] == node.settings.node_name  # undisturbed


def test_ctl_finds_the_only_node_without_a_name(node, capsys):
    # No --node-name and no --control-socket: the one live socket in state_dir.
    assert main(["ctl", "status", "--json",
                     "--state-dir", str(node.settings.state_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["node"] == node.settings.node_name


@pytest.mark.parametrize("argv, feature", [
    (["pause", "p", "default"], "pause"),
    (["cancel", "p", "abc"], "cancel"),
    (["info", "partitions"], "info partitions"),
])
def test_a_missing_feature_is_an_error_not_a_crash(argv, feature, make_settings,
                                                   monkeypatch, capsys):
    make_settings()
    for name in ("pause", "resume", "cancel"):
        monkeypatch.delattr(roger, name, raising=False)
    monkeypatch.delattr(roger.info, "partitions", raising=False)
    assert main(argv + ["--broker-url", BROKER]) == 1
    assert f"roger: {feature} is not available in this version" in capsys.readouterr().err


# ------------------------------------------------------------------- tables


def test_table_aligns_columns():
    assert table(("A", "LONGER"), [["xyz", None], [True, [1, 2]]]).splitlines() == [
        "A    LONGER", "xyz  -", "yes  1,2"]


def test_status_text():
    status = {
        "node": "n1", "pid": 10, "waiting": {"late": {"default": 2}},
        "running": {"myapp": {"pid": 11, "queues": {"default": {
            "max_workers": 4, "consuming": True, "paused": False, "pid": 12,
            "workers": [13, 14], "running": [{"id": "j"}], "restarts": 1}}}},
        "processes": {"roger.control": {"pid": 15, "state": "running", "restarts": 0}},
    }
    lines = status_text(status).splitlines()
    assert lines[0] == "node n1 (pid 10)"
    assert lines[2].split() == ["myapp", "11", "default", "4", "yes", "no", "12", "13,14",
                                "1", "1"]
    assert 'late {"default":2}' in lines[3]
    assert "roger.control pid 15" in lines[4]


def test_status_text_shows_an_idle_queue_as_idle():
    status = {"node": "n1", "pid": 10, "running": {"tenant": {"pid": None, "idle": True,
              "queues": {"default": {"max_workers": 2, "idle": True, "consuming": False,
                                     "paused": False, "pid": None, "workers": [],
                                     "running": []}}}}}
    row = status_text(status).splitlines()[2].split()
    assert row[:6] == ["tenant", "-", "default", "2", "idle", "no"]


def test_partitions_and_jobs_text():
    text = partitions_text({"n1": {
        "running": {"myapp": {"default": {"max_workers": 4, "paused": True,
                                          "message_count": 7, "delayed": 3,
                                          "consumer_count": 2}}},
        "waiting": {"late": {"default": 1}}}})
    assert text.splitlines()[0].split()[-2:] == ["DELAYED", "CONSUMERS"]
    assert [line.split() for line in text.splitlines()[1:]] == [
        ["n1", "myapp", "default", "running", "4", "yes", "7", "3", "2"],
        ["n1", "late", "default", "waiting", "1", "-", "-", "-", "-"]]
    assert partitions_text({}) == "no node answered"
    assert jobs_text([], "queued jobs") == "(0 queued jobs)"
