"""The status page's HTTP server: the standard library's, with every read bounded.

`serve(settings)` is the process main the node starts (child ``roger.web``
of the root, see `roger.node.web`). It binds `http_host`:`http_port`,
reports ready, and serves until SIGTERM.

A hostile client cannot stop it serving:

- each connection has a thread (``ThreadingHTTPServer``), at most
  `MAX_CONNECTIONS` at once: more are answered 503 at once and closed;
- a request must arrive whole (request line, headers, body) within
  `REQUEST_DEADLINE` seconds, whatever its pace (slow loris): a reaper
  thread shuts the socket of one that does not; each read also times out
  after `READ_TIMEOUT`;
- the request line and headers may take `MAX_HEAD` bytes and a body
  `MAX_BODY` (a larger ``Content-Length`` gets 413 unread; chunked bodies
  are refused);
- paths are looked up in fixed tables (`roger.web.routes`): nothing from a
  request reaches the file system, so ``../`` leads nowhere.

One request per connection (HTTP/1.0): the page asks rarely, and a
connection that lingers between requests would be one more to police.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import supervision
from roger import config
from roger.settings import Settings
from roger.web.routes import SECURITY_HEADERS, Mounts, Request, Response, Routes
from supervision.signals import Wakeup

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "REQUEST_DEADLINE", "WebServer", "mounts", "serve"]

log = logging.getLogger("roger.web")

MAX_CONNECTIONS = 64
MAX_HEAD = 16 * 1024  # request line and headers, bytes
MAX_BODY = 4 * 1024  # an action's JSON body is a few dozen bytes
READ_TIMEOUT = 5.0
REQUEST_DEADLINE = 10.0
REAP_INTERVAL = 0.5  # how late a deadline may be enforced
BIND_RETRY = 5.0  # seconds between attempts to bind a port that is taken


class _Budget:
    """A file wrapper that refuses to read more than `limit` bytes in all."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.left = raw, limit

    def _take(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise ConnectionAbortedError("request larger than allowed")
        return data

    def readline(self, size: int = -1) -> bytes:
        cap = self.left + 1 if size < 0 else min(size, self.left + 1)
        return self._take(self.raw.readline(cap))

    def read(self, size: int = -1) -> bytes:
        cap = self.left + 1 if size < 0 else min(size, self.left + 1)
        return self._take(self.raw.read(cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class Handler(BaseHTTPRequestHandler):
    """One connection, one request; the answer comes from `server.routes`."""

    server: WebServer
    protocol_version = "HTTP/1.0"
    server_version = "roger"
    sys_version = ""
    timeout = READ_TIMEOUT  # each blocking read on the socket
    # http.server's own errors (a bad request line, too many headers...), as JSON.
    error_content_type = "application/json"
    error_message_format = '{"ok": false, "error": "%(code)d %(message)s"}'

    def setup(self) -> None:
        super().setup()
        self.rfile = _Budget(self.rfile, MAX_HEAD + MAX_BODY)  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(b"")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send(Response(411, b'{"ok":false,"error":"send a Content-Length"}'))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(Response(413, b'{"ok":false,"error":"body too large (or no length)"}'))
            return
        self._serve(self.rfile.read(length) if length else b"")

    # Anything else (PUT, DELETE, OPTIONS: no CORS preflight is ever granted)
    # gets http.server's 501.

    def _serve(self, body: bytes) -> None:
        self.server.reaper.done(self.connection)  # the request is in: no more deadline
        request = Request(self.command, self.path,
                          {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            response = self.server.routes(request)
        except Exception as e:
            log.exception("status page: %s %s failed", self.command, self.path[:200])
            response = Response(500, f'{{"ok":false,"error":"{type(e).__name__}"}}'.encode())
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in (SECURITY_HEADERS | response.headers).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Access lines at debug level; the URL never carries the token.
        log.debug("status page: %s %s", self.address_string(), format % args)


class Reaper:
    """Shuts the socket of each connection whose request is not in by its deadline."""

    def __init__(self, deadline: float = REQUEST_DEADLINE) -> None:
        self.deadline = deadline
        self.pending: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            self.pending[sock] = time.monotonic() + self.deadline

    def done(self, sock: socket.socket) -> None:
        with self.lock:
            self.pending.pop(sock, None)

    def run(self) -> None:
        # A blocking read has no overall deadline of its own: this loop is it.
        while not self.stopped.wait(REAP_INTERVAL):
            now = time.monotonic()
            with self.lock:
                late = [s for s, t in self.pending.items() if t <= now]
                for sock in late:
                    del self.pending[sock]
            for sock in late:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # its reader wakes with EOF
                except OSError:
                    pass


class WebServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection limit and a request deadline."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], routes: Routes) -> None:
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.routes = routes
        self.reaper = Reaper()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)
        threading.Thread(target=self.reaper.run, name="roger-web-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            _busy(request)
            self.shutdown_request(request)
            return
        self.reaper.watch(request)
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.reaper.done(request)
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away, timed out or sent too much: one quiet line.
        log.debug("status page: dropped a connection from %s", client_address, exc_info=True)

    def server_close(self) -> None:
        self.reaper.stopped.set()
        super().server_close()


def _busy(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                  b"Retry-After: 1\r\n\r\n")
    except OSError:
        pass


def serve(settings: Settings) -> None:
    """Process main of the status page: bind, report ready, serve until SIGTERM.

    The node checked the port before it started (`roger.node.web.check_port`),
    so the first bind succeeds. If a restarted page finds its port taken, it
    reports ready all the same and tries again every `BIND_RETRY` seconds,
    saying so in the log: exiting would have the root restart it in a loop
    until the node's restart intensity took the whole node down.
    """
    config.configure(settings)  # roger.info & co., called from here, use the node's settings
    wakeup = Wakeup()  # SIGTERM from the root ends the waits below
    routes = Routes(settings, mounts=mounts(settings))
    server = _bind(settings, routes)
    supervision.ready()
    while server is None:
        if select.select([wakeup.reader], [], [], BIND_RETRY)[0]:
            return
        server = _bind(settings, routes)
    thread = threading.Thread(target=server.serve_forever, args=(0.5,), name="roger-web",
                              daemon=True)
    thread.start()
    try:
        select.select([wakeup.reader], [], [])
    finally:
        server.shutdown()
        server.server_close()


def mounts(settings: Settings) -> Mounts:
    """Other read-only pages this server serves beside the status page.

    ``/metrics`` when ``metrics_port == http_port`` (SPEC: the page "may
    share the metrics server"): the node then starts no metrics server of
    its own, and this one renders the same exposition.
    """
    if settings.metrics_port is None or settings.metrics_port != settings.http_port:
        return {}
    # Here only: the page alone has no use for prometheus_client.
    from roger.node.exposition import CONTENT_TYPE, Exposition

    exposition = Exposition(settings)
    return {"/metrics": lambda: (exposition.render(), CONTENT_TYPE)}


def _bind(settings: Settings, routes: Routes) -> WebServer | None:
    address = (settings.http_host, settings.http_port or 0)
    try:
        server = WebServer(address, routes)
    except OSError as e:
        log.error("status page: cannot listen on %s:%s: %s; trying again in %.0f s",
                  *address, e.strerror or e, BIND_RETRY)
        return None
    log.info("status page at http://%s:%d/ (%s)", settings.http_host, server.server_port,
             "actions need the token" if settings.http_token else "read-only: no http_token")
    return server
