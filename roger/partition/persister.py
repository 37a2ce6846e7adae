"""Where a partition's global state is kept between coordinators.

The coordinator writes the whole state after every change and reads it when
it becomes the active one, so whatever a persister stores survives a
failover and a restart of the whole cluster. Pluggable: the `persister`
setting is ``"filesystem"`` (the default) or ``"module:Class"``, a class
taking the settings and offering `load(partition) -> dict | None` and
`save(partition, state: dict)`.

The filesystem persister writes ``<state_dir>/<partition>.global.json``
atomically (write, fsync, rename). For a standby on another machine to
take over with the state, `state_dir` must be shared storage; otherwise a
takeover starts from that machine's own last copy.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Protocol

from roger.settings import Settings


class Persister(Protocol):
    def load(self, partition: str) -> dict | None: ...

    def save(self, partition: str, state: dict) -> None: ...


class FilesystemPersister:
    """One JSON file per partition under `state_dir`."""

    def __init__(self, settings: Settings) -> None:
        self.dir = Path(settings.state_dir)

    def _path(self, partition: str) -> Path:
        return self.dir / f"{partition}.global.json"

    def load(self, partition: str) -> dict | None:
        try:
            return json.loads(self._path(partition).read_text())
        except FileNotFoundError:
            return None

    def save(self, partition: str, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(partition)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def load_persister(settings: Settings) -> Persister:
    """The persister named by the `persister` setting."""
    name = settings.persister
    if name == "filesystem":
        return FilesystemPersister(settings)
    module_name, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"persister: cannot load {name!r}: {e}") from e
    return cls(settings)
