"""The status page over plain HTTP: what it shows, who may act, and hostile clients.

The browser's side (a real Chromium pressing the buttons) is in
``test_web_browser.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from testjobs import Record, events

import roger
from roger import Node, control
from roger.errors import RogerError
from roger.node import web
from roger.settings import Settings
from roger.web import server as web_server
from roger.web.routes import STATIC, Routes
from supervision import Supervisor
from tests.helpers import wait_for
from tests.roger.websupport import TOKEN, free_port, paused, queue_of, request, state

PAUSE = "/api/pause"


def pause_body(partition: str) -> dict:
    return {"partition": partition, "queue": "default"}


# ------------------------------------------------------------------ the node's page


def test_no_page_unless_http_port_is_set():
    assert Settings().http_port is None
    assert web.web_spec(Settings()) is None


def test_the_node_starts_the_page_by_a_name_in_the_web_layer():
    module, _, name = web.SERVER.partition(":")
    assert module.startswith("roger.web.")
    assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_the_page_and_its_assets_come_from_the_node_and_nothing_from_elsewhere(
        web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        page = request(settings.http_port, "GET", "/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for path in STATIC:
            asset = request(settings.http_port, "GET", path)
            assert asset.status == 200
            # No fonts, scripts or styles from a CDN: no absolute URL, no @import.
            assert not re.search(rb"(src|href)=\"(https?:)?//|url\(|@import|https?://",
                                 asset.body), path


def test_state_shows_partitions_queues_workers_and_running_jobs_with_their_age(
        web_settings, partition, out):
    settings = web_settings(partitions={partition: {"default": 2, "other": 1}},
                            http_token=TOKEN)
    with Node(settings) as node:
        job = Record.create({"out": out, "sleep": 30})
        job.enqueue(partition)
        wait_for(lambda: events(out, "start"), what="the job to start")
        snapshot = wait_for(lambda: (s := state(settings.http_port))["running"] and s,
                            what="the running job on the page")
        assert snapshot["node"] == settings.node_name and snapshot["actions"] is True
        assert [n["name"] for n in snapshot["nodes"]] == [settings.node_name]
        default = queue_of(snapshot, partition)
        assert default["workers"] == 2 and default["busy"] == 1 and default["paused"] is False
        assert default["buried"] == 0 and default["rejected"] == 0
        assert queue_of(snapshot, partition, "other")["workers"] == 1
        [running] = snapshot["running"]
        assert running["id"] == job.id and running["name"] == "testjobs:Record"
        assert (running["partition"], running["queue"], running["node"]) == (
            partition, "default", settings.node_name)
        assert running["age_seconds"] >= 0
        node.stop()


def test_buried_and_rejected_are_counted_and_listed(web_settings, partition, out):
    from testjobs import Fail
    settings = web_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        Fail.create({"out": out}).enqueue(partition)
        _publish_garbage(partition)
        counted = wait_for(lambda: (q := queue_of(state(settings.http_port), partition))
                           and q["buried"] == 1 and q["rejected"] == 1 and q,
                           what="one buried and one rejected on the page")
        assert counted["ready"] == 0
        query = f"?partition={partition}&queue=default"
        [buried] = request(settings.http_port, "GET", "/api/buried" + query).json()["items"]
        assert buried["name"] == "testjobs:Fail" and "fail #1" in buried["error"]
        [rejected] = request(settings.http_port, "GET", "/api/rejected" + query).json()["items"]
        assert rejected["reason"] and "garbage" in rejected["args"]
        bad = request(settings.http_port, "GET", "/api/buried?partition=../x&queue=default")
        assert bad.status == 400
        missing = request(settings.http_port, "GET", f"/api/buried?partition={partition}&queue=no")
        assert missing.status == 404
    assert roger.info.queue_depths(partition, "default", settings=settings) == {
        "ready": 0, "buried": 1, "rejected": 1}
    assert roger.info.queue_depths(partition, "no", settings=settings) == {
        "ready": None, "buried": None, "rejected": None}


def test_idle_partitions_and_queues_are_shown_idle(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}}, idle_after=0.5)
    with Node(settings):
        snapshot = wait_for(lambda: (s := state(settings.http_port))["nodes"]
                            and s["nodes"][0]["idle"] == [partition] and s,
                            what="the partition shown idle")
        [part] = snapshot["partitions"]
        assert part["nodes"][settings.node_name]["state"] == "idle"
        assert queue_of(snapshot, partition)["idle_on"] == [settings.node_name]


def _publish_garbage(partition: str) -> None:
    import kombu

    from tests.roger.support import BROKER
    with kombu.Connection(BROKER) as conn:
        conn.Producer().publish(b"\x00garbage\xff", routing_key=f"{partition}-default",
                                content_type="application/json", content_encoding="binary")


# ------------------------------------------------------------------------- acting


def test_the_right_token_pauses_and_resumes(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    with Node(settings):
        answer = request(settings.http_port, "POST", PAUSE, pause_body(partition),
                         {"X-Roger-Token": TOKEN})
        assert answer.status == 200, answer.body
        assert wait_for(lambda: paused(settings, partition), what="the queue paused")
        assert queue_of(state(settings.http_port), partition)["paused"] is True
        # Scripts may send it the usual way too.
        answer = request(settings.http_port, "POST", "/api/resume", pause_body(partition),
                         {"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 200
        wait_for(lambda: not paused(settings, partition), what="the queue resumed")


def test_without_a_token_configured_the_page_is_read_only(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}})
    with Node(settings):
        assert state(settings.http_port)["actions"] is False
        for token in (None, TOKEN, ""):
            headers = {"X-Roger-Token": token} if token is not None else {}
            answer = request(settings.http_port, "POST", PAUSE, pause_body(partition), headers)
            assert answer.status == 403 and "read-only" in answer.json()["error"]
        assert not paused(settings, partition)


def test_a_missing_or_wrong_token_gets_401_or_403_and_changes_nothing(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    with Node(settings):
        port = settings.http_port
        missing = request(port, "POST", PAUSE, pause_body(partition))
        assert missing.status == 401 and "www-authenticate" in missing.headers
        for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
            answer = request(port, "POST", PAUSE, pause_body(partition), {"Authorization": wrong})
            assert answer.status in (401, 403), wrong
        for wrong in ("nope", TOKEN + "x", TOKEN[:-1], "ü" * 5):
            headers = {"X-Roger-Token": wrong.encode().decode("latin-1")}
            assert request(port, "POST", PAUSE, pause_body(partition), headers).status == 403
        # Not in the URL either: a token there is no token.
        assert request(port, "POST", f"{PAUSE}?token={TOKEN}", pause_body(partition)
                       ).status == 401
        assert not paused(settings, partition)


def test_an_action_is_post_only(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    with Node(settings):
        for method in ("GET", "HEAD"):
            answer = request(settings.http_port, method,
                             f"{PAUSE}?partition={partition}&queue=default",
                             headers={"X-Roger-Token": TOKEN})
            assert answer.status == 405 and answer.headers["allow"] == "POST"
        assert not paused(settings, partition)


def test_a_cross_origin_request_cannot_act(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}}, http_token=TOKEN)
    with Node(settings):
        port = settings.http_port
        # What a form on another site can send: a form body, its Origin, no header of ours.
        form = request(port, "POST", PAUSE, f"partition={partition}&queue=default".encode(),
                       {"Content-Type": "application/x-www-form-urlencoded",
                        "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert form.status in (401, 403, 415)
        # Even carrying the token (it cannot: a preflight would be needed), elsewhere is refused.
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Content-Type": "text/plain"}):
            answer = request(port, "POST", PAUSE, pause_body(partition),
                             {"X-Roger-Token": TOKEN, "Content-Type": "application/json"}
                             | headers)
            assert answer.status in (403, 415), headers
        # No CORS preflight is ever granted.
        preflight = request(port, "OPTIONS", PAUSE, headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        assert not paused(settings, partition)
        # The page's own origin may.
        same = request(port, "POST", PAUSE, pause_body(partition),
                       {"X-Roger-Token": TOKEN, "Origin": f"http://127.0.0.1:{port}",
                        "Sec-Fetch-Site": "same-origin"})
        assert same.status == 200


def test_the_page_comes_back_when_its_process_is_killed(web_settings, partition):
    settings = web_settings(partitions={partition: {"default": 1}})

    def web_pid() -> int | None:
        with control.Client(settings.control_socket) as ctl:
            process = ctl.request("status")["processes"].get("roger.web", {})
        return process.get("pid") if process.get("state") == "running" else None

    with Node(settings):
        first = web_pid()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (pid := web_pid()) and pid != first, what="a new page process")
        assert wait_for(lambda: _answers(settings.http_port), what="the page to answer again")
        assert state(settings.http_port)["partitions"][0]["name"] == partition


def test_a_page_that_cannot_bind_keeps_trying_and_never_takes_the_node_down(make_settings):
    # A port lost while the page restarted, as its own supervisor sees it:
    # started (ready), alive, not restarting in a loop. The port is held by
    # another program (a forked holder would leave it open in the tree).
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
         "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('bound', flush=True); "
         "time.sleep(120)", str(port)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"bound\n"
        settings = make_settings(http_port=port, system_exchange_prefix="web-nobody")
        with Supervisor([web.web_spec(settings)], intensity=1, period=60.0).start() as tree:
            time.sleep(web_server.BIND_RETRY + 1)  # one retry at least
            [child] = tree.which_children()
            assert (child.state, child.restarts) == ("running", 0)
            holder.kill()
            holder.wait()
            assert wait_for(lambda: _answers(port), timeout=web_server.BIND_RETRY + 15,
                            what="the page once its port is free")
    finally:
        holder.kill()
        holder.wait()


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/", timeout=5).status == 200
    except OSError:
        return False


# ---------------------------------------------------------------- hostile clients


@pytest.fixture
def bare_server(make_settings):
    """The page's server in this process, on a cluster of no node: for what needs no node."""
    settings = make_settings(http_port=free_port(), http_token=TOKEN,
                             system_exchange_prefix="web-nobody")
    server = web_server.WebServer(("127.0.0.1", settings.http_port), Routes(settings))
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_page_on_loopback_answers_only_to_loopback_names(bare_server):
    """DNS rebinding: evil.example pointed at 127.0.0.1 must not read the page."""
    port = bare_server.server_port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        assert request(port, "GET", "/", headers={"Host": host}).status == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert request(port, "GET", "/", headers={"Host": host}).status == 200


def _serves(port: int) -> bool:
    return request(port, "GET", "/", timeout=10).status == 200


def test_slow_loris_clients_do_not_stop_it_serving(bare_server):
    port = bare_server.server_port
    loris = []
    for _ in range(20):  # each sends half a request, then keeps adding a byte
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        loris.append(sock)
    assert _serves(port)
    # However steadily they trickle (faster than any read timeout), each is
    # cut off once its request is overdue.
    open_ = set(loris)
    deadline = time.monotonic() + web_server.REQUEST_DEADLINE + 30
    while open_ and time.monotonic() < deadline:
        for sock in list(open_):
            try:
                sock.sendall(b"X")
            except OSError:  # reset or broken pipe: the server hung up
                open_.discard(sock)
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        for sock in readable:
            with contextlib.suppress(OSError):
                if sock.recv(100):
                    continue
            open_.discard(sock)
        assert _serves(port)
    assert not open_, f"{len(open_)} slow clients still connected"
    for sock in loris:
        sock.close()


def test_too_many_connections_get_503_and_the_server_recovers(bare_server):
    port = bare_server.server_port
    held = [socket.create_connection(("127.0.0.1", port))
            for _ in range(web_server.MAX_CONNECTIONS)]
    try:
        extra = wait_for(lambda: _first_line(port), what="a refusal of one too many")
        assert b"503" in extra
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _serves(port), what="the server to serve again")


def _read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (one request each)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _first_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        line = sock.recv(100)
    return line if b"503" in line else b""


def test_huge_bodies_and_headers_are_refused_unread(bare_server):
    port = bare_server.server_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Roger-Token: " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: 1000000000\r\n\r\n" + b"x" * 65536)
        assert sock.recv(100).startswith(b"HTTP/1.0 413")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        try:
            for _ in range(100):  # 3 MB of headers: cut off long before
                sock.sendall(b"X-Pad: " + b"p" * 30000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            assert not sock.recv(100).startswith(b"HTTP/1.0 200")
    chunked = request(port, "POST", PAUSE, None, {"Transfer-Encoding": "chunked"})
    assert chunked.status == 411
    assert _serves(port)


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/static/../routes.py", "/static/..%2f..%2fserver.py",
    "/static/%2e%2e/%2e%2e/settings.py", "//etc/passwd", "/static//etc/passwd",
    "/static/app.js/../../routes.py", "/api/state/../../../etc/passwd", "/\x00", "/" + "a" * 9000,
])
def test_bad_paths_lead_nowhere(bare_server, path):
    answer = request(bare_server.server_port, "GET", path.replace("\x00", "%00"))
    assert answer.status in (400, 404, 414)
    assert b"root:" not in answer.body and b"import" not in answer.body


def test_garbage_requests_get_an_error_and_it_keeps_serving(bare_server):
    port = bare_server.server_port
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET\r\n\r\n",
                    b"BREW /pot HTTP/1.1\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(garbage)
            answer = _read_all(sock)
            # An error (without a status line when not even the version was readable).
            assert b"error" in answer and b" 200 " not in answer, garbage
    assert _serves(port)


def test_a_taken_port_stops_the_node_at_start_with_a_clear_error(web_settings, partition):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = web_settings(partitions={partition: {"default": 1}},
                                http_port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(RogerError, match="status page.*in use"):
            Node(settings).start()
        assert time.monotonic() - started < 30
