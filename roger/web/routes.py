"""What each path of the status page answers, and who may act.

Reading (GET) is open to whoever reaches the address (it binds 127.0.0.1
unless `http_host` says otherwise). Acting (POST) needs, in this order:

1. a token configured (`http_token`); without one the page is read-only
   and every action gets 403;
2. a request no other site can make a browser send (CSRF): a JSON body
   (``Content-Type: application/json``, which an HTML form cannot send),
   and, when the browser names them, an ``Origin`` that is this page's own
   and a ``Sec-Fetch-Site`` of ``same-origin``. A cross-site ``fetch`` that
   sets the token header or a JSON type needs a CORS preflight, which this
   server never grants;
3. the token in the ``X-Roger-Token`` header, or as ``Authorization: Bearer
   <token>`` for scripts (never in the URL, so it stays out of logs,
   history and referrers): missing gets 401, wrong gets 403. A cross-site
   page cannot send either header without a CORS preflight.

Only then is the action run; a refused request changes nothing.

On a loopback address (the default), every request must also name this
machine in its ``Host`` header (``127.0.0.1``, ``localhost`` or ``[::1]``):
a site whose name an attacker points at 127.0.0.1 (DNS rebinding) would
otherwise be "same origin" with the page and could read it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from roger import admin, info
from roger.amqp.connection import QueueNotFound
from roger.errors import RogerError
from roger.job import Job
from roger.partition.coordination import cancel, pause, resume
from roger.settings import Settings, check_partition_name, check_queue_name
from roger.web.snapshot import Snapshots

__all__ = ["ACTIONS", "Mounts", "Request", "Response", "Routes", "TOKEN_HEADER"]

log = logging.getLogger("roger.web")

TOKEN_HEADER = "X-Roger-Token"
LIST_LIMIT = 50  # jobs a buried or rejected list shows
TEXT_LIMIT = 300  # characters of a job's args or error in a list

# The page and its two assets: a fixed table, so no path from a request ever
# reaches the file system.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}

SECURITY_HEADERS = {
    # Our own files only; no inline script; no framing (clickjacking).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Request:
    method: str
    target: str  # the request line's path, with its query
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, obj: Any, **headers: str) -> Response:
    return Response(status, json.dumps(obj, default=str).encode(), headers=headers)


def _error(status: int, why: str, **headers: str) -> Response:
    return _json(status, {"ok": False, "error": why}, **headers)


def _fields(body: dict, *names: str) -> tuple[str, ...]:
    values = []
    for name in names:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name!r} must be a non-empty string")
        values.append(value)
    return tuple(values)


def _queue_action(fn: Callable[..., Any]) -> Callable[[Settings, dict], Any]:
    def act(settings: Settings, body: dict) -> Any:
        partition, queue = _fields(body, "partition", "queue")
        return fn(check_partition_name(partition), check_queue_name(queue), settings=settings)
    return act


def _cancel(settings: Settings, body: dict) -> Any:
    partition, job_id = _fields(body, "partition", "job_id")
    if len(job_id) > 200:
        raise ValueError("'job_id' is too long")
    return cancel(check_partition_name(partition), job_id, settings=settings)


ACTIONS: dict[str, Callable[[Settings, dict], Any]] = {
    "/api/pause": _queue_action(pause),
    "/api/resume": _queue_action(resume),
    "/api/cancel": _cancel,
    "/api/retry-buried": _queue_action(admin.retry_buried),
    "/api/replay-rejected": _queue_action(admin.replay_rejected),
}


# GET path -> a function returning (body, content type): other read-only
# pages served on the same port, e.g. the Prometheus text on /metrics when
# metrics_port and http_port are one (SPEC: "may share the metrics server").
Mounts = Mapping[str, Callable[[], tuple[bytes, str]]]


class Routes:
    """Answers one parsed request: the page, its assets, its API and `mounts`."""

    def __init__(self, settings: Settings, snapshots: Snapshots | None = None,
                 mounts: Mounts | None = None) -> None:
        self.settings = settings
        self.snapshots = snapshots or Snapshots(settings)
        self.mounts = dict(mounts or {})
        self.token = (settings.http_token.get_secret_value().encode()
                      if settings.http_token is not None else None)
        self.hosts = _loopback_hosts(settings)
        files = resources.files("roger.web") / "static"
        self.static = {path: (files / name).read_bytes() for path, (name, _) in STATIC.items()}

    def __call__(self, request: Request) -> Response:
        path = urlsplit(request.target).path
        if self.hosts is not None and request.headers.get("host", "").lower() not in self.hosts:
            return _error(421, "this page answers to 127.0.0.1 and localhost only")
        if path in ACTIONS:
            if request.method != "POST":
                return _error(405, "actions are POST only", Allow="POST")
            return self.act(path, request)
        if request.method not in ("GET", "HEAD"):
            return _error(405, "this path is read-only", Allow="GET, HEAD")
        if path in STATIC:
            return Response(200, self.static[path], STATIC[path][1])
        if path in self.mounts:
            body, content_type = self.mounts[path]()
            return Response(200, body, content_type, {"Cache-Control": "no-store"})
        if path == "/api/state":
            try:
                return _json(200, self.snapshots.get(), **{"Cache-Control": "no-store"})
            except RogerError as e:  # RabbitMQ is away: say so, the page keeps its last view
                return _error(503, f"cannot gather the cluster: {e}")
        if path in ("/api/buried", "/api/rejected"):
            return self.listing(path, request.target)
        return _error(404, "no such page")

    # -------------------------------------------------------------- reading

    def listing(self, path: str, target: str) -> Response:
        query = parse_qs(urlsplit(target).query)
        try:
            partition = check_partition_name((query.get("partition") or [""])[0])
            queue = check_queue_name((query.get("queue") or [""])[0])
        except ValueError as e:
            return _error(400, str(e))
        lister = info.buried_jobs if path == "/api/buried" else info.rejected_jobs
        try:
            items = lister(partition, queue, LIST_LIMIT, settings=self.settings)
        except QueueNotFound:
            return _error(404, f"{partition}/{queue} has no such queue")
        except RogerError as e:
            return _error(503, f"cannot list: {e}")
        return _json(200, {"partition": partition, "queue": queue, "limit": LIST_LIMIT,
                           "items": [_listed(item) for item in items]},
                     **{"Cache-Control": "no-store"})

    # --------------------------------------------------------------- acting

    def act(self, path: str, request: Request) -> Response:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(request.body.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = ACTIONS[path](self.settings, body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return _error(400, str(e))
        except Exception as e:  # the cluster said no (or is away): say so, keep serving
            log.warning("status page: %s failed: %s", path, e)
            return _error(502, f"{type(e).__name__}: {e}")
        log.info("status page: %s %s done", path, {k: v for k, v in body.items()
                                                   if k in ("partition", "queue", "job_id")})
        self.snapshots.forget()
        return _json(200, {"ok": True, "result": result})

    def refuse(self, request: Request) -> Response | None:
        """The reason not to act on `request` (a response), or None to go ahead."""
        if self.token is None:
            return _error(403, "this page is read-only: the node has no http_token")
        headers = request.headers
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "actions take a JSON body (Content-Type: application/json)")
        origin = headers.get("origin")
        host = headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return _error(403, "cross-origin requests cannot act")
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _error(403, "cross-site requests cannot act")
        given = _token_of(headers)
        if not given:
            return _error(401, f"actions need the token in the {TOKEN_HEADER} header "
                               "(or Authorization: Bearer)",
                          **{"WWW-Authenticate": 'Bearer realm="roger"'})
        # Header values arrive decoded as latin-1: back to the bytes sent.
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.token):
            return _error(403, "wrong token")
        return None


def _token_of(headers: dict[str, str]) -> str | None:
    """The token a request carries: ``X-Roger-Token``, else ``Authorization: Bearer``."""
    given = headers.get(TOKEN_HEADER.lower())
    if not given:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    return given or None


def _loopback_hosts(settings: Settings) -> frozenset[str] | None:
    """The ``Host`` headers a page on a loopback address accepts; None: any."""
    if settings.http_host not in ("127.0.0.1", "localhost", "::1"):
        return None  # the operator chose the address: any name may lead to it
    port = settings.http_port
    return frozenset(f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]"))


def _listed(item: Any) -> dict:
    """A buried or rejected message as the page lists it."""
    if isinstance(item, Job):
        reason = getattr(item, "buried_reason", None) or getattr(item, "rejected_reason", None)
        error = getattr(item, "buried_error", None) or getattr(item, "rejected_error", None)
        return {"id": item.id, "name": item.name, "args": _cut(json.dumps(item.args, default=str)),
                "queued_at": item.queued_at, "retry_count": item.retry_count,
                "reason": reason, "error": _cut(error)}
    return {"id": item.id, "name": None, "args": _cut(item.body), "queued_at": None,
            "retry_count": None, "reason": item.rejected_reason,
            "error": _cut(item.rejected_error)}


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + "..."
