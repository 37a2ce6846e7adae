"""The control socket: every command, malformed input, and the socket file's life."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from testjobs import Record, WaitForKill, ends, read

import roger
from roger import Node
from roger.control import MAX_LINE, Client, bind_socket, find_socket
from roger.errors import ControlError
from roger.node.control_server import MAX_CONNECTIONS
from tests.helpers import wait_for
from tests.roger.support import delete_queues, queue_depth, queue_names


class Raw:
    """A bare connection to the control socket, for bytes no `Client` would send."""

    def __init__(self, path: Path) -> None:
        self.sock = wait_for(lambda: self._connect(path), what="connected")
        self.buf = b""

    @staticmethod
    def _connect(path: Path) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(str(path))
        except BlockingIOError:  # a full backlog: the server is still accepting
            sock.close()
            return None
        return sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, f"connection closed; unread: {self.buf!r}"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def at_eof(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def ctl(node: Node) -> Client:
    return Client(node.settings.control_socket, timeout=60)


def forget(partition: str) -> None:
    """Delete the queues of a partition a test made beside its `partition` fixture."""
    delete_queues(queue_names(partition, ["default", "other"], [1]))


# ------------------------------------------------------------------ commands


def test_status_shows_the_tree(node, partition):
    with ctl(node) as c:
        status = c.request("status")
    assert status["ok"] is True
    assert status["node"] == node.settings.node_name
    assert status["pid"] == node.pid
    assert status["waiting"] == {}
    part = status["running"][partition]
    queue = part["queues"]["default"]
    assert part["pid"] > 0 and queue["pid"] > 0 and queue["consuming"]
    assert queue["max_workers"] == 1 and queue["restarts"] == 0
    assert isinstance(queue["workers"], list)
    control = status["processes"]["roger.control"]
    assert control["state"] == "running" and control["pid"] not in (None, node.pid)
    assert status["control_socket"] == str(node.settings.control_socket)


def test_status_counts_restarts(node, partition):
    def status():
        with ctl(node) as c:
            return c.request("status")["running"].get(partition)

    before = status()
    assert before["restarts"] == 0
    os.kill(before["queues"]["default"]["pid"], signal.SIGKILL)  # the consumer...
    wait_for(lambda: (status() or {}).get("queues", {}).get("default", {}).get("restarts") == 1,
             what="consumer restarted")
    os.kill(before["pid"], signal.SIGKILL)  # ...and the partition's supervisor
    after = wait_for(lambda: (status() or {}).get("restarts") == 1 and status(),
                     what="partition restarted")
    assert after["pid"] != before["pid"]
    assert after["queues"]["default"]["restarts"] == 0  # a new consumer, counted afresh


def test_partition_commands(node, partition):
    other = partition + "b"
    try:
        with ctl(node) as c:
            status = c.request("start_partition", partition=other, queues={"default": 1})
            assert status["running"][other]["queues"]["default"]["consuming"]

            status = c.request("reconfigure_partition", partition=other,
                               queues={"default": 2, "other": 0})
            queues = status["running"][other]["queues"]
            assert queues["default"]["max_workers"] == 2
            assert not queues["other"]["consuming"]

            before = status["running"][other]["pid"]
            status = c.request("restart_partition", partition=other)
            assert status["running"][other]["pid"] != before
            assert status["running"][other]["queues"]["default"]["max_workers"] == 2

            # No queue at all: the partition stays, with its coordinator.
            status = c.request("reconfigure_partition", partition=other, queues={})
            assert status["running"][other]["queues"] == {}
            assert set(status["running"][other]["coordinator"]) == {
                "active", "queue_keys", "paused", "delayed", "twin_locks"}

            status = c.request("stop_partition", partition=other)
            assert other not in status["running"] and partition in status["running"]

            with pytest.raises(ControlError, match="not configured") as info:
                c.request("restart_partition", partition=other)
            assert info.value.reply["ok"] is False
            with pytest.raises(ControlError, match="already configured"):
                c.request("start_partition", partition=partition, queues={"default": 1})
            assert c.request("status")["running"][partition]  # still serving
    finally:
        forget(other)


@pytest.mark.parametrize("idle_after", [0, 1.0])
def test_reconfigure_to_no_queue_then_back_consumes_again(make_settings, partition, out,
                                                          idle_after):
    settings = make_settings(partitions={partition: {"default": 1}}, idle_after=idle_after)
    with Node(settings) as node, ctl(node) as c:
        status = c.request("reconfigure_partition", partition=partition, queues={})
        assert status["running"][partition]["queues"] == {}
        job = Record.create({"out": out}).enqueue(partition)
        assert queue_depth(f"{partition}-default") == 1  # nothing consumes it

        status = c.request("reconfigure_partition", partition=partition,
                           queues={"default": 1})
        assert status["running"][partition]["queues"]["default"]["max_workers"] == 1
        assert [e["id"] for e in wait_for(lambda: ends(out), what="the job")] == [job.id]


def test_pause_resume_and_cancel_act_on_the_cluster(make_settings, partition):
    with Node(make_settings(partitions={partition: {"default": 1}})) as node, ctl(node) as c:
        assert c.request("pause", partition=partition, queue="default") == {"ok": True}
        queue = wait_for(lambda: _queue_if(c, partition, paused=True), what="paused")
        assert not queue["consuming"]
        assert c.request("resume", partition=partition, queue="default") == {"ok": True}
        queue = wait_for(lambda: _queue_if(c, partition, paused=False), what="resumed")
        assert queue["consuming"]
        assert c.request("cancel", partition=partition, job_id="abc") == {"ok": True}


def _queue_if(c, partition: str, paused: bool) -> dict | None:
    queue = c.request("status")["running"][partition]["queues"]["default"]
    return queue if queue.get("paused") is paused and queue.get("consuming") is not paused \
        else None


def test_shutdown_replies_then_stops_the_node(node):
    path = node.settings.control_socket
    with ctl(node) as c:
        assert c.request("shutdown") == {"ok": True, "shutting_down": True}
        # Whatever comes after the shutdown is refused, not left hanging.
        with pytest.raises(ControlError, match="shutting down|closed|no reply"):
            c.request("status")
    assert node._handle.join(30) == 0  # the root exits on its own, orderly
    assert not path.exists()  # the control server removed its socket


# ----------------------------------------------------------- malformed input


@pytest.mark.parametrize("line, error", [
    (b"\xff\xfe garbage", "UTF-8"),
    (b"not json", "JSON object"),
    (b"[1, 2, 3]", "got an array"),
    (b"[" * 60_000, "nested"),  # under the line cap, over the JSON decoder's depth
    (b'"status"', "got a string"),
    (b"{}", '"cmd"'),
    (b'{"cmd": 7}', '"cmd"'),
    (b'{"cmd": "explode"}', "unknown command 'explode'"),
    (b'{"cmd": "status", "partition": "x"}', "unexpected field"),
    (b'{"cmd": "stop_partition"}', "missing field 'partition'"),
    (b'{"cmd": "stop_partition", "partition": 42}', "invalid partition name"),
    (b'{"cmd": "stop_partition", "partition": "roger.control"}', "invalid partition name"),
    (b'{"cmd": "pause", "partition": "p", "queue": ["default"]}', "invalid queue name"),
    (b'{"cmd": "cancel", "partition": "p", "job_id": null}', "job_id"),
    (b'{"cmd": "start_partition", "partition": "p", "queues": [1]}', "queues must be"),
    (b'{"cmd": "start_partition", "partition": "p", "queues": {"default": "4"}}',
     "integer >= 0"),
    (b'{"cmd": "start_partition", "partition": "p", "queues": {"default": true}}',
     "integer >= 0"),
    (b'{"cmd": "reconfigure_partition", "partition": "p", "queues": []}', "object of queue"),
])
def test_malformed_request_gets_an_error_and_the_connection_lives_on(node, line, error):
    raw = Raw(node.settings.control_socket)
    try:
        raw.send(line + b"\n")
        reply = raw.reply()
        assert reply["ok"] is False and error in reply["error"], reply
        raw.send(b'{"cmd": "status"}\n')
        assert raw.reply()["ok"] is True
    finally:
        raw.close()


def test_pipelined_requests_are_answered_in_order(node, partition):
    raw = Raw(node.settings.control_socket)
    try:
        raw.send(b'{"cmd": "status"}\n\n  \nnope\n{"cmd": "stop_partition", "partition": "zz"}\n'
                 b'{"cmd": "status"}\n')
        replies = [raw.reply() for _ in range(4)]
    finally:
        raw.close()
    assert replies[0]["ok"] and partition in replies[0]["running"]
    assert "JSON" in replies[1]["error"]
    assert "not configured" in replies[2]["error"]
    assert replies[3]["ok"]


def test_oversized_line_gets_an_error_and_only_that_connection_closes(node):
    big, other = Raw(node.settings.control_socket), Raw(node.settings.control_socket)
    try:
        big.send(b'{"cmd": "status", "pad": "' + b"x" * (MAX_LINE + 10))
        reply = big.reply()
        assert not reply["ok"] and "longer than" in reply["error"]
        assert big.at_eof()
        other.send(b'{"cmd": "status"}\n')
        assert other.reply()["ok"]
    finally:
        big.close()
        other.close()


def test_a_silent_client_does_not_block_others(node):
    silent = Raw(node.settings.control_socket)  # connects and says nothing
    half = Raw(node.settings.control_socket)
    half.send(b'{"cmd": "sta')  # half a request, never finished
    try:
        with ctl(node) as c:
            for _ in range(3):
                assert c.request("status")["ok"]
        half.send(b'tus"}\n')  # and it is still served when it goes on
        assert half.reply()["ok"]
    finally:
        silent.close()
        half.close()


def test_connections_are_capped_and_a_freed_slot_is_reused(node):
    path = node.settings.control_socket
    held = [Raw(path) for _ in range(MAX_CONNECTIONS)]
    try:
        for raw in held[:1]:  # every one of them is being served...
            raw.send(b'{"cmd": "status"}\n')
            assert raw.reply()["ok"]
        extra = Raw(path)  # ...and one more is told why it cannot be
        assert "too many connections" in extra.reply()["error"] and extra.at_eof()
        held.pop().close()
        wait_for(lambda: _status_ok(path), what="a free slot")
    finally:
        for raw in held:
            raw.close()


def _status_ok(path: Path) -> bool:
    raw = Raw(path)
    try:
        raw.send(b'{"cmd": "status"}\n')
        return raw.reply().get("ok", False)
    except (AssertionError, OSError):
        return False
    finally:
        raw.close()


def test_a_burst_of_clients_is_served(node):
    # More connects at once than the listen backlog holds: Client retries EAGAIN.
    def one(_: int) -> bool:
        with Client(node.settings.control_socket, timeout=30) as c:
            return c.request("status")["ok"]

    with ThreadPoolExecutor(max_workers=48) as pool:
        assert all(pool.map(one, range(96)))


def test_client_errors(tmp_path, node):
    with pytest.raises(ControlError, match="cannot connect.*is the node running"):
        Client(tmp_path / "nobody.sock").request("status")
    with pytest.raises(ControlError, match="unknown command"):
        ctl(node).request("frobnicate")


def test_client_finds_the_configured_node(node):
    # make_settings configured the process-wide settings with the node's name.
    assert Client().path == node.settings.control_socket
    with Client() as c:
        assert c.request("status")["node"] == node.settings.node_name


def test_find_socket_without_a_node_name_uses_the_one_live_socket(node):
    settings = roger.Settings(state_dir=node.settings.state_dir)  # node_name: default
    Path(settings.state_dir, "stale.sock").touch()  # not live: ignored
    assert find_socket(settings) == node.settings.control_socket


# ------------------------------------------------------------ the socket file


def test_socket_file_mode_0600_in_a_private_directory(make_settings, tmp_path):
    settings = make_settings(state_dir=str(tmp_path / "new" / "state"))
    with Node(settings):
        path = settings.control_socket
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_stale_socket_is_replaced(make_settings):
    settings = make_settings()
    settings.control_socket.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(settings.control_socket))  # a node that died without cleaning up
    dead.close()
    assert settings.control_socket.exists()
    with Node(settings) as node, ctl(node) as c:
        assert c.request("status")["ok"]


def test_live_socket_is_never_stolen(node, make_settings):
    twin = make_settings(control_socket=str(node.settings.control_socket))
    with pytest.raises(ControlError, match="another node is serving"):
        Node(twin).start()
    # The control process of a second node checks again when it binds.
    with pytest.raises(ControlError, match="another node is serving"):
        bind_socket(node.settings.control_socket)
    with ctl(node) as c:
        assert c.request("status")["node"] == node.settings.node_name


def test_a_file_that_is_not_a_socket_is_left_alone(make_settings, tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        Node(make_settings(control_socket=str(path))).start()
    assert path.read_text() == "keep me"


def test_a_path_too_long_for_a_unix_socket_is_a_clear_error(make_settings, tmp_path):
    path = tmp_path / ("x" * 120) / "n.sock"
    with pytest.raises(ControlError, match="more than the 107"):
        Node(make_settings(control_socket=str(path))).start()


# Run as another user. The server refuses at once, so the send may meet a
# closed socket; the refusal is still there to read.
PEER_CODE = """
import contextlib, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
with contextlib.suppress(OSError):
    s.sendall(b'{"cmd": "status"}\\n')
print(s.recv(1000).decode())
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_other_users_are_refused(make_settings):
    # An open directory and socket mode: only the peer check stands in the way.
    with tempfile.TemporaryDirectory(prefix="rgc") as d:
        os.chmod(d, 0o755)
        settings = make_settings(control_socket=os.path.join(d, "n.sock"))
        with Node(settings):
            os.chmod(settings.control_socket, 0o666)
            done = subprocess.run(["/usr/bin/env", "python3", "-c", PEER_CODE,
                                   str(settings.control_socket)],
                                  user=65534, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply == {"ok": False,
                     "error": "permission denied: only the node's own user may control it"}


# -------------------------------------------------------- restart_partition


def test_restart_partition_finishes_the_job_in_flight_and_spares_the_other(
        make_settings, partition, out):
    other = partition + "b"
    settings = make_settings(partitions={partition: {"default": 1}, other: {"default": 1}})
    try:
        with Node(settings) as node, ctl(node) as c:
            before = c.request("status")["running"]
            job = Record.create({"out": out, "sleep": 1.0}).enqueue(partition)
            wait_for(lambda: read(out), what="job start")
            after = c.request("restart_partition", partition=partition)["running"]
            # The restart waited for the job (shutdown_timeout is 5 s)...
            assert [e["id"] for e in ends(out)] == [job.id]
            assert after[partition]["pid"] != before[partition]["pid"]
            # ...and the other partition kept every process.
            assert after[other]["pid"] == before[other]["pid"]
            assert after[other]["queues"]["default"]["pid"] == \
                before[other]["queues"]["default"]["pid"]
            wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="acked")
    finally:
        forget(other)


def test_restart_partition_requeues_a_job_that_outlives_the_shutdown_timeout(
        make_settings, partition, out):
    other = partition + "b"
    settings = make_settings(partitions={partition: {"default": 1}, other: {"default": 1}},
                             shutdown_timeout=0.5)
    try:
        with Node(settings) as node, ctl(node) as c:
            before = c.request("status")["running"][other]
            job = WaitForKill.create({"out": out}).enqueue(partition)
            wait_for(lambda: read(out), what="job start")
            c.request("restart_partition", partition=partition)
            # Killed by the restart, requeued, and run again by the new partition.
            wait_for(lambda: len(read(out)) == 2, what="job run again")
            assert [e["id"] for e in read(out)] == [job.id, job.id]
            wait_for(lambda: queue_depth(f"{partition}-default") == 0, what="acked")
            after = c.request("status")["running"][other]
            assert after["pid"] == before["pid"]
            assert after["queues"]["default"]["pid"] == before["queues"]["default"]["pid"]
    finally:
        forget(other)
