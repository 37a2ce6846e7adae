"""Broker URLs: the failover list of a `broker_url`, and its redacted form for logs.

Kept apart from `roger.settings` (which re-exports both) so that a module
that only needs to show or split a URL does not need the settings model.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["broker_urls", "redact_url"]


def broker_urls(url: str) -> list[str]:
    """The failover URLs of a ';'-joined `broker_url`, empty parts dropped."""
    return [part.strip() for part in url.split(";") if part.strip()]


def redact_url(url: str) -> str:
    """`url` with any password replaced by ``***``, safe for logs and errors.

    Handles kombu's failover lists (``amqp://a;amqp://b``).
    """
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" not in netloc:
            return url
        credentials, host = netloc.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        # Unparseable: never risk echoing a secret.
        return "<unparseable broker URL>"
