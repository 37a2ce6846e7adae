"""The metrics server: the process that serves ``http://<metrics_host>:<metrics_port>/metrics``.

A child of the node's root supervisor (child id ``"roger.metrics"``,
started only when `metrics_port` is set). It holds no totals: every scrape
renders the root's (`roger.node.exposition`), so it may crash and restart
without resetting a counter.

It is the standard library's `ThreadingHTTPServer`, bounded against hostile
clients: at most `MAX_CONNECTIONS` at once (more are closed at once), each
read waits at most `READ_TIMEOUT` seconds, and a connection is cut after
`CONNECTION_DEADLINE` seconds whatever it does (a slow loris trickling one
byte at a time included). Request lines and headers are bounded by
`http.server` itself (64 KiB a line, 100 headers); there is no body to read.
Only ``GET /metrics`` (and ``/``, a pointer to it) answer 200.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import supervision
from roger.settings import Settings
from supervision import ChildSpec
from supervision.signals import Wakeup

if TYPE_CHECKING:
    from roger.node.exposition import Exposition

__all__ = ["CHILD_ID", "MetricsServer", "check_port", "metrics_spec", "run_metrics_server"]

log = logging.getLogger("roger.metrics")

CHILD_ID = "roger.metrics"
MAX_CONNECTIONS = 32
READ_TIMEOUT = 5.0
CONNECTION_DEADLINE = 15.0
BIND_RETRY = 5.0  # seconds between attempts to bind a port that is taken


def metrics_spec(settings: Settings) -> ChildSpec:
    """The root supervisor's child that serves the metrics."""
    return ChildSpec(CHILD_ID, run_metrics_server, args=(settings,), restart="permanent",
                     shutdown=5.0, notify_ready=True, start_timeout=15.0)


def check_port(settings: Settings) -> None:
    """Raise `OSError` naming the address when the metrics port cannot be bound."""
    host, port = settings.metrics_host, settings.metrics_port
    try:
        probe = MetricsServer((host, port), None)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    probe.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = READ_TIMEOUT  # every read of the request
    server_version = "roger-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics" and self.server.exposition is not None:
            from roger.node.exposition import respond

            respond(self, self.server.exposition)
        elif path == "/":
            self._send(200, b'roger node metrics: <a href="/metrics">/metrics</a>\n',
                       "text/html; charset=utf-8")
        else:
            self._send(404, b"not found: only /metrics is served here\n")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` with bounded connections (see the module's docstring)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], exposition: Exposition | None) -> None:
        self.exposition = exposition
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("metrics: %d connections open; closing one from %s", MAX_CONNECTIONS,
                        client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: its slot is ours to give back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        cut = threading.Timer(CONNECTION_DEADLINE, _cut, args=(request,))
        cut.daemon = True
        cut.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            cut.cancel()
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a request from %s failed", client_address[0], exc_info=True)


def _cut(sock: socket.socket) -> None:
    """End a connection past its deadline: its blocked read or write returns."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def run_metrics_server(settings: Settings) -> None:
    """Process main: serve until SIGTERM; a taken port is retried, never a crash loop."""
    wakeup = Wakeup()
    address = (settings.metrics_host, settings.metrics_port)
    server: MetricsServer | None = None
    told_ready = False
    while server is None:
        try:
            server = MetricsServer(address, None)
        except OSError as e:
            log.error("metrics: cannot listen on %s:%s (%s); trying again in %g s",
                      *address, e, BIND_RETRY)
            if not told_ready:  # the node must not wait for the port
                supervision.ready()
                told_ready = True
            if _stopped(wakeup, BIND_RETRY):
                return
    if not told_ready:
        # Listening: scrapes wait in the backlog. The node goes on starting its
        # partitions meanwhile, not after prometheus_client's import.
        supervision.ready()
    # prometheus_client is loaded here only: the node's other processes never need it.
    from roger.node.exposition import Exposition

    server.exposition = Exposition(settings)
    thread = threading.Thread(target=server.serve_forever, name="roger-metrics-http",
                              daemon=True)
    thread.start()
    log.info("serving metrics at http://%s:%s/metrics", *address)
    try:
        # Only a signal ends it (the process also dies with its parent); the
        # bound merely keeps the wait finite.
        while not _stopped(wakeup, 60.0):
            pass
    finally:
        server.shutdown()
        server.server_close()


def _stopped(wakeup: Wakeup, timeout: float) -> bool:
    """Wait up to `timeout` seconds for SIGTERM/SIGINT; True when one came."""
    with selectors.DefaultSelector() as sel:
        sel.register(wakeup.reader, selectors.EVENT_READ)
        return bool(sel.select(timeout)) and bool(wakeup.read())
