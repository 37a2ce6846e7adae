"""What the status page's tests share: raw HTTP, and what the page and `roger.info` say.

The `web_settings` fixture (a node with a page) is in ``conftest.py``.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

import roger

TOKEN = "s3cret-t0ken"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
    """One HTTP request to the page on 127.0.0.1:`port`; a dict body is sent as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        conn.close()


def state(port: int) -> dict:
    return request(port, "GET", "/api/state").json()


def queue_of(snapshot: dict, partition: str, queue: str = "default") -> dict | None:
    for p in snapshot["partitions"]:
        if p["name"] == partition:
            return next((q for q in p["queues"] if q["name"] == queue), None)
    return None


def paused(settings, partition: str, queue: str = "default") -> bool:
    """What `roger.info` says (not the page): is the queue paused on every node?"""
    nodes = roger.info.partitions(settings=settings)
    return bool(nodes) and all(n["running"][partition][queue]["paused"] for n in nodes.values())
