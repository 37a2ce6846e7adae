"""The process-wide default settings used by the producer-side API.

`roger.configure(settings)` sets them; without it the first use builds
`Settings()` from the environment and the TOML file. Functions that take an
explicit `settings=` argument ignore this default.
"""

from __future__ import annotations

import threading

from roger.settings import Settings

__all__ = ["configure", "get_settings"]

_settings: Settings | None = None
_lock = threading.Lock()


def configure(settings: Settings | None = None, **overrides: object) -> Settings:
    """Set the process-wide default settings and return them.

    ``configure(settings)`` installs that object; ``configure(**overrides)``
    builds ``Settings(**overrides)`` (env and file still apply below them);
    ``configure(settings, **overrides)`` validates a copy of `settings` with
    the overrides applied; ``configure()`` re-reads the environment.
    """
    global _settings
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        # model_copy(update=...) would skip validation: rebuild instead.
        settings = type(settings)(**(settings.model_dump() | overrides))
    if not isinstance(settings, Settings):
        raise TypeError(f"configure() needs a roger.Settings, got {type(settings).__name__}")
    with _lock:
        _settings = settings
    return settings


def get_settings() -> Settings:
    """The process-wide default settings, built from the environment on first use."""
    global _settings
    current = _settings
    if current is not None:
        return current
    with _lock:
        if _settings is None:
            _settings = Settings()
        return _settings
