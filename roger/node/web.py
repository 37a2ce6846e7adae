"""The status page's process: a child of the root supervisor, named late.

The page (`roger.web`) shows the cluster through `roger.info` and acts
through `roger.pause` and friends: it sits in the layer above the API, so
the node, two layers below, must not import it. The root starts it the way
a plugin is started: by the name of its main function, `SERVER`, imported in
the child process only (`run_named`). This module is the one place that name
is written; ``tests/roger/test_web_http.py`` checks it resolves, to a
module of the web layer.

The child exists only when `http_port` is set. Its id, ``"roger.web"``,
cannot clash with a partition's (partition names have no dot).
"""

from __future__ import annotations

import errno
import importlib
import socket
from typing import Any

from roger.errors import RogerError
from roger.settings import Settings
from supervision import ChildSpec

__all__ = ["CHILD_ID", "SERVER", "check_port", "run_named", "web_spec"]

CHILD_ID = "roger.web"
SERVER = "roger.web.server:serve"  # module:function, called with the node's Settings
START_TIMEOUT = 15.0


def web_spec(settings: Settings) -> ChildSpec | None:
    """The root's child serving the status page, or None when `http_port` is unset."""
    if settings.http_port is None:
        return None
    return ChildSpec(CHILD_ID, run_named, args=(SERVER, settings), restart="permanent",
                     shutdown=5.0, notify_ready=True, start_timeout=START_TIMEOUT)


def run_named(target: str, *args: Any) -> Any:
    """Import ``module:function`` `target` (in this process) and call it with `args`."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


def check_port(settings: Settings) -> None:
    """Raise `RogerError` now, in the caller, when the page's address cannot be bound.

    The child binds it for real moments later; this check turns the common
    mistakes (a port in use, an address not of this machine) into a clear
    error at start rather than a child that fails to start.
    """
    if settings.http_port is None:
        return
    address = (settings.http_host, settings.http_port)
    try:
        infos = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as e:
        why = "it is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise RogerError(f"cannot serve the status page on {settings.http_host}:"
                         f"{settings.http_port}: {why}; set http_port (or http_host) "
                         "to a free one") from None
