"""Configuration: `roger.Settings`, a `pydantic-settings` class.

Sources, highest precedence first:

1. keyword arguments (the CLI passes its flags this way);
2. environment variables ``ROGER_<FIELD>``; structured values (lists,
   dicts) are JSON, e.g. ``ROGER_PARTITIONS='{"myapp": {"default": 10}}'``;
3. a TOML file with top-level keys: the path given as
   ``Settings(_config_file=PATH)`` / ``Settings.load(config=PATH)``, else
   ``$ROGER_CONFIG``, else ``roger.toml`` in the working directory (skipped
   when absent; an explicitly named file must exist);
4. the defaults below.

Settings are frozen (safe to share between threads and to use as defaults):
derive a variant with ``Settings(**(settings.model_dump() | changes))``.
Invalid values raise `pydantic.ValidationError` naming the field;
`describe_validation_error` renders one for humans. The broker URL's password
is never shown: not in `repr`, not in errors, not in `safe_broker_url`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from roger.urls import broker_urls, redact_url

__all__ = ["PeriodicEntry", "Settings", "broker_urls", "describe_validation_error",
           "redact_url"]

DEFAULT_CONFIG_FILE = Path("roger.toml")
DEFAULT_RETRY_LEVELS = [1, 3, 5, 10, 20, 35, 60, 100, 200, 400, 1000, 1800]
# A week: far beyond any queueing, retries included (the default levels add up
# to an hour), yet a key lost with its job cannot block its producers for long.
QUEUE_KEY_TTL = 7 * 24 * 3600.0

# Names become parts of queue names: "<partition>-<queue>", "...retry.<s>",
# "<partition>-execution-waiting-<key>". Dots are reserved for the suffixes
# and queue names have no "-", so every queue name parses back one way.
_PARTITION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")
_MODULE = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_MODULE_NAME = re.compile(_MODULE)
_OBJECT_REF = re.compile(rf"{_MODULE}:{_MODULE}")
_NODE_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,200}")
_SECRET_FIELDS = frozenset({"broker_url"})
_HIDDEN_INPUTS = frozenset({"broker_url", "http_token"})  # never echoed in errors

# The explicit config file travels from __init__ to settings_customise_sources
# (a classmethod, called inside BaseSettings.__init__) through a context var.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("roger_config_file", default=None)


def check_partition_name(name: str) -> str:
    """Return `name` if it is a valid partition name, else raise `ValueError`."""
    if not isinstance(name, str) or not _PARTITION_NAME.fullmatch(name) or (
        "execution-waiting" in name
    ):
        raise ValueError(
            f"invalid partition name {name!r}: use 1-100 letters, digits, '_' or '-' "
            "(not starting with '-')"
        )
    return name


def check_queue_name(name: str) -> str:
    """Return `name` if it is a valid queue name, else raise `ValueError`."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ValueError(f"invalid queue name {name!r}: use 1-100 letters, digits or '_'")
    return name


def check_queues(queues: Any) -> dict[str, int]:
    """Return `queues` (queue name -> workers, each an int >= 0) if valid, else `ValueError`.

    An empty dict is valid: a partition with no queue consuming on this node
    (it keeps its coordinator and its place in `status`).
    """
    if not isinstance(queues, dict):
        raise ValueError(f"queues must be an object of queue name to workers, e.g. "
                         f'{{"default": 4}}, got {queues!r}')
    for name, workers in queues.items():
        check_queue_name(name)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"queue {name!r}: workers must be an integer >= 0, "
                             f"got {workers!r}")
    return dict(queues)


def default_node_name() -> str:
    """``<hostname>-<pid>``: unique per running node on a host."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"
    return f"{host}-{os.getpid()}"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/roger``, or ``~/.local/state/roger`` (the XDG default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(base).expanduser() / "roger"


class PeriodicEntry(BaseModel):
    """One entry of the `periodic` setting: a job enqueued on a cron schedule.

    Only its shape is checked here; whether its cron expression, time zone,
    job and partition are valid is checked when a node starts (the job's
    module must be imported first): see `roger.partition.periodic.check`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$",
                      description="Unique name; the schedule's state is kept under it.")
    cron: str = Field(description='When: "0 3 * * *", 6 fields with seconds first, or @daily.')
    job: str = Field(description='Registered job name, "module:QualName".')
    args: Any = Field(default_factory=dict, description="The job's args (JSON values).")
    partition: str = Field(description="Partition whose active coordinator enqueues it.")
    queue: str | None = Field(None, description="Queue; None: the job's queue_type(args).")
    timezone: str = Field("UTC", description='IANA time zone of the cron fields, e.g. '
                                             '"Europe/Amsterdam".')


class Settings(BaseSettings):
    """Every setting of roger, from flags, ``ROGER_*`` env, TOML and defaults."""

    model_config = SettingsConfigDict(
        env_prefix="ROGER_",
        env_ignore_empty=True,
        env_parse_none_str="null",
        extra="forbid",
        frozen=True,
        # Pydantic's messages would echo inputs, including the broker password.
        hide_input_in_errors=True,
    )

    broker_url: str = Field(
        "amqp://guest:guest@localhost:5672//",
        description="AMQP URL of RabbitMQ, or the URLs of a RabbitMQ cluster's nodes as a "
                    "list or joined by ';' (kept ';'-joined); every connection fails over "
                    "across them.",
    )
    partitions: dict[str, dict[str, Annotated[int, Field(ge=0)]]] = Field(
        default_factory=dict,
        description='Partitions this node serves: {"myapp": {"default": 10}} (queue: workers).',
    )
    imports: list[str] = Field(
        default_factory=list, description="Modules to import so their job classes register."
    )
    node_name: str = Field(
        default_factory=default_node_name, description="This node's name in the cluster."
    )
    control_socket: Path | None = Field(
        None, description="Unix control socket path; default <state_dir>/<node_name>.sock."
    )
    retry_levels: list[Annotated[int | float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_LEVELS),
        min_length=1,
        description="Seconds to wait before each retry, in order; any positive numbers, "
                    "repeats allowed (e.g. [5, 5, 5]), to the millisecond.",
    )
    max_buried: int = Field(10_000, gt=0, description="Buried messages kept per queue.")
    queue_key_ttl: float = Field(
        QUEUE_KEY_TTL, gt=0, allow_inf_nan=False,
        description="Seconds a queue key is held at most: a key whose job has not settled by "
                    "then (finished, buried, cancelled, purged or rejected) is released.",
    )
    shutdown_timeout: float = Field(
        15.0, ge=0, description="Seconds running jobs get to finish on shutdown."
    )
    callbacks: str | None = Field(
        None, description='Callbacks object as "module:attribute".'
    )
    persister: str = Field("filesystem", min_length=1, description="Global state persister.")
    state_dir: Path = Field(
        default_factory=default_state_dir, description="Directory for sockets and state."
    )
    system_exchange_prefix: str = Field(
        "roger", pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="Prefix of system exchanges."
    )
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="RabbitMQ type of the main queues."
    )
    quorum_initial_group_size: int | None = Field(
        None, ge=1,
        description="Replicas of each quorum queue (x-quorum-initial-group-size); None: "
                    "RabbitMQ's default, every cluster node up to 3. RabbitMQ refuses a "
                    "queue declared with another size: set it alike everywhere.",
    )
    side_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="RabbitMQ type of the retry, .buried and .rejected queues. quorum: "
                    "replicated, so on a cluster a dead node never keeps a consumer from "
                    "declaring them, at the cost of three more quorum queues per queue.",
    )
    max_jobs_per_worker: int | None = Field(
        None, gt=0, description="Recycle a worker after this many jobs; None: never."
    )
    min_workers: int = Field(0, ge=0, description="Workers kept alive while a queue is idle.")
    # 4 by measurement (benchmarks/mixed.py, issue 13): no-op throughput x2.2 on
    # quorum and x1.3 on classic queues against 1, and short jobs mixed with long ones
    # wait no longer than at 1 (the extra deliveries wait in the consumer, not in
    # a worker, and go to whichever worker frees first). docs/operating.md says
    # when to set 1.
    prefetch_multiplier: float = Field(
        4.0, ge=1,
        description="A consumer's prefetch is ceil(max_workers * prefetch_multiplier); "
                    "deliveries beyond the running jobs wait in the consumer, in order.",
    )
    idle_after: float = Field(
        30.0, ge=0,
        description="Seconds without a message after which a queue gives back its consumer, "
                    "workers and connection (watched from one shared connection); 0 disables.",
    )
    max_message_bytes: int = Field(
        1_048_576, gt=0, description="Largest message body accepted, in bytes."
    )
    periodic: list[PeriodicEntry] = Field(
        default_factory=list,
        description='Jobs enqueued on a schedule, each slot once cluster-wide: [{"name": '
                    '"nightly-report", "cron": "0 3 * * *", "job": "myapp.jobs:Report", '
                    '"partition": "myapp"}] (args, queue, timezone optional).',
    )
    heartbeat: float = Field(10.0, ge=0, description="AMQP heartbeat in seconds; 0 disables.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection.")
    confirm_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for RabbitMQ to confirm a publish."
    )
    # Metrics (SPEC section 8): off unless a port is given.
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Serve Prometheus metrics at http://<metrics_host>:<port>/metrics; "
                    "None (the default) serves nothing.",
    )
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="The address the metrics server binds."
    )

    http_port: int | None = Field(
        None, ge=1, le=65535,
        description="TCP port of the node's status page (see roger.web); None: no page.",
    )
    http_host: str = Field(
        "127.0.0.1", min_length=1, description="Address the status page binds to."
    )
    http_token: SecretStr | None = Field(
        None, min_length=1,
        description="Token the status page's actions need (header X-Roger-Token); "
                    "None: the page is read-only.",
    )

    @property
    def counts_jobs(self) -> bool:
        """Whether consumers count settlements up the tree: for the metrics or the page's rates."""
        return self.metrics_port is not None or self.http_port is not None

    def __init__(self, _config_file: str | os.PathLike[str] | None = None, **values: Any):
        path = _config_file if _config_file is not None else os.environ.get("ROGER_CONFIG")
        if path is not None:
            path = Path(path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"roger config file not found: {path}")
        token = _CONFIG_FILE.set(path)
        try:
            super().__init__(**values)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(
                f"invalid TOML in {path or DEFAULT_CONFIG_FILE}: {exc}"
            ) from None
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def load(
        cls, config: str | os.PathLike[str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings the way the CLI does.

        `config` names the TOML file (default: ``$ROGER_CONFIG`` or
        ``./roger.toml``); `overrides` are command-line flags, where None
        means "flag not given" and is dropped so lower sources still apply.
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls(_config_file=config, **given)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE.get() or DEFAULT_CONFIG_FILE
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return init_settings, env_settings, toml

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any) -> Any:
        # control_socket defaults from two other settings, so node_name and
        # state_dir get their defaults here once (one pid, one hostname).
        if isinstance(data, dict) and data.get("control_socket") is None:
            data = dict(data)
            if data.get("node_name") is None:
                data["node_name"] = default_node_name()
            if data.get("state_dir") is None:
                data["state_dir"] = default_state_dir()
            if isinstance(data["node_name"], str) and isinstance(data["state_dir"], str | Path):
                state_dir = Path(data["state_dir"]).expanduser()
                data["control_socket"] = state_dir / f"{data['node_name']}.sock"
        return data

    @field_validator("broker_url", mode="before")
    @classmethod
    def _join_broker_urls(cls, value: Any) -> Any:
        # A list (also a JSON list in ROGER_BROKER_URL) is kept as kombu's
        # ';'-joined failover string: one form for every connection.
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("not a JSON list of URLs") from None
        if isinstance(value, list | tuple):
            if not value or not all(isinstance(url, str) and url.strip() for url in value):
                raise ValueError("must be a non-empty list of amqp:// URLs")
            value = ";".join(url.strip() for url in value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        for part in value.split(";"):
            scheme = part.split("://", 1)[0] if "://" in part else ""
            if scheme not in ("amqp", "amqps", "pyamqp"):
                raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("partitions")
    @classmethod
    def _check_partitions(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for partition, queues in value.items():
            check_partition_name(partition)
            check_queues(queues)
        return value

    @field_validator("imports")
    @classmethod
    def _check_imports(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a module name")
        return value

    @field_validator("node_name")
    @classmethod
    def _check_node_name(cls, value: str) -> str:
        if not _NODE_NAME.fullmatch(value):
            raise ValueError("use 1-200 letters, digits, '_', '.', '@' or '-'")
        return value

    @field_validator("state_dir", "control_socket")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("retry_levels")
    @classmethod
    def _check_retry_levels(cls, value: list[float]) -> list[float]:
        # A level is a retry queue's TTL, in whole milliseconds.
        if any(round(seconds * 1000) < 1 for seconds in value):
            raise ValueError("each level must be at least 0.001 seconds")
        return value

    @field_validator("callbacks")
    @classmethod
    def _check_callbacks(cls, value: str | None) -> str | None:
        if value is not None and not _OBJECT_REF.fullmatch(value):
            raise ValueError(f'must look like "package.module:attribute", got {value!r}')
        return value

    @property
    def broker_urls(self) -> list[str]:
        """The URLs of `broker_url`, one per RabbitMQ node, in the order given."""
        return broker_urls(self.broker_url)

    @property
    def safe_broker_url(self) -> str:
        """`broker_url` with the password masked: the only form to log."""
        return redact_url(self.broker_url)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, (redact_url(value) if key in _SECRET_FIELDS else value)


def describe_validation_error(error: ValidationError) -> str:
    """One readable line per problem, each naming the setting.

    Inputs are shown except for secret fields (the broker URL).
    """
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        message = problem["msg"].removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "unknown setting"
        line = f"{where}: {message}"
        field = str(problem["loc"][0]) if problem["loc"] else ""
        if "input" in problem and field not in _HIDDEN_INPUTS and problem["type"] != (
            "missing"
        ):
            shown = repr(problem["input"])
            line += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        lines.append(line)
    return "invalid roger settings:\n" + "\n".join(f"  {line}" for line in lines)
