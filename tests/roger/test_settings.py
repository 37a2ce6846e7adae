"""Settings: sources and their precedence, validation, secrets."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from roger import config
from roger.config import configure, get_settings
from roger.settings import DEFAULT_RETRY_LEVELS, Settings, describe_validation_error


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ROGER_* from the outside, and a working directory without roger.toml."""
    for key in list(os.environ):
        if key.startswith("ROGER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults():
    s = Settings()
    assert s.broker_url == "amqp://guest:guest@localhost:5672//"
    assert s.partitions == {} and s.imports == []
    assert s.retry_levels == DEFAULT_RETRY_LEVELS
    assert s.queue_key_ttl == 7 * 24 * 3600  # a week
    assert (s.max_buried, s.shutdown_timeout, s.queue_type) == (10_000, 15, "quorum")
    assert s.callbacks is None and s.persister == "filesystem"
    assert s.system_exchange_prefix == "roger"
    assert s.node_name.endswith(f"-{os.getpid()}")
    assert s.state_dir == Path(os.environ["XDG_STATE_HOME"]) / "roger"
    assert s.control_socket == s.state_dir / f"{s.node_name}.sock"


def test_control_socket_follows_state_dir_and_node_name(monkeypatch, tmp_path):
    monkeypatch.setenv("ROGER_STATE_DIR", str(tmp_path / "run"))
    s = Settings(node_name="node1")
    assert s.control_socket == tmp_path / "run" / "node1.sock"
    assert Settings(control_socket=tmp_path / "x.sock").control_socket == tmp_path / "x.sock"


def test_precedence_flags_over_env_over_file_over_defaults(monkeypatch, tmp_path):
    write_toml(
        tmp_path / "roger.toml",
        'max_buried = 1\nshutdown_timeout = 1\nheartbeat = 1\n'
        '[partitions.myapp]\ndefault = 10\nother = 5\n',
    )
    monkeypatch.setenv("ROGER_MAX_BURIED", "2")
    monkeypatch.setenv("ROGER_SHUTDOWN_TIMEOUT", "2")

    s = Settings(max_buried=3)

    assert s.max_buried == 3  # flag beats env and file
    assert s.shutdown_timeout == 2  # env beats file
    assert s.heartbeat == 1  # file beats default
    assert s.partitions == {"myapp": {"default": 10, "other": 5}}
    assert s.connect_timeout == 5  # default


def test_structured_env_values_are_json(monkeypatch):
    monkeypatch.setenv("ROGER_PARTITIONS", '{"myapp": {"default": 10}}')
    monkeypatch.setenv("ROGER_RETRY_LEVELS", "[1, 2, 4]")
    monkeypatch.setenv("ROGER_IMPORTS", '["app.jobs"]')
    s = Settings()
    assert s.partitions == {"myapp": {"default": 10}}
    assert s.retry_levels == [1, 2, 4]
    assert s.imports == ["app.jobs"]


@pytest.mark.parametrize("levels", [[5, 5, 5], [30, 10], [0.5, 1.5, 1.5], [1]])
def test_retry_levels_are_any_positive_numbers(levels):
    assert Settings(retry_levels=levels).retry_levels == levels


def test_explicit_config_file_and_load_dropping_unset_flags(monkeypatch, tmp_path):
    path = write_toml(tmp_path / "elsewhere.toml", 'queue_type = "classic"\nmax_buried = 7\n')
    s = Settings.load(config=path, max_buried=None, min_workers=2)
    assert (s.queue_type, s.max_buried, s.min_workers) == ("classic", 7, 2)

    monkeypatch.setenv("ROGER_CONFIG", str(path))
    assert Settings().queue_type == "classic"


def test_an_explicit_config_file_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        Settings.load(config=tmp_path / "missing.toml")


def test_broken_toml_names_the_file(tmp_path):
    write_toml(tmp_path / "roger.toml", "max_buried = = 1")
    with pytest.raises(ValueError, match="roger.toml"):
        Settings()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retry_levels": []}, "retry_levels"),
        ({"retry_levels": [0, 3]}, "retry_levels"),
        ({"retry_levels": [5, 0.0001]}, "retry_levels"),
        ({"retry_levels": [5, "inf"]}, "retry_levels"),
        ({"max_buried": 0}, "max_buried"),
        ({"queue_key_ttl": 0}, "queue_key_ttl"),
        ({"partitions": {"myapp": {"default": -1}}}, "partitions"),
        ({"partitions": {"my.app": {"default": 1}}}, "partitions"),
        ({"partitions": {"myapp": {"a-b": 1}}}, "partitions"),
        ({"queue_type": "stream"}, "queue_type"),
        ({"callbacks": "no_colon"}, "callbacks"),
        ({"max_jobs_per_worker": 0}, "max_jobs_per_worker"),
        ({"imports": ["not a module"]}, "imports"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValidationError) as caught:
        Settings(**changes)
    assert field in str(caught.value)
    assert f"{field}" in describe_validation_error(caught.value)


def test_invalid_env_value_names_the_field(monkeypatch):
    monkeypatch.setenv("ROGER_MAX_BURIED", "lots")
    with pytest.raises(ValidationError, match="max_buried"):
        Settings()


def test_password_never_shown():
    url = "amqp://alice:s3cret@rabbit.example:5672/vhost"
    s = Settings(broker_url=url)
    assert s.safe_broker_url == "amqp://alice:***@rabbit.example:5672/vhost"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)

    with pytest.raises(ValidationError) as caught:
        Settings(broker_url="http://alice:s3cret@rabbit.example", max_buried=-1)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in describe_validation_error(caught.value)
    assert "broker_url" in describe_validation_error(caught.value)


def test_failover_urls_are_all_redacted():
    s = Settings(broker_url="amqp://a:x1@h1//;amqp://b:x2@h2//")
    assert "x1" not in s.safe_broker_url and "x2" not in s.safe_broker_url


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.max_buried = 5


def test_configure_sets_the_process_default():
    previous = config._settings
    try:
        chosen = configure(Settings(max_buried=42))
        assert get_settings() is chosen
        assert configure(chosen, max_buried=43).max_buried == 43
        with pytest.raises(ValidationError):
            configure(chosen, max_buried=-1)
    finally:
        config._settings = previous


# ----------------------------------------------------- a RabbitMQ cluster (issue 17)

CLUSTER_URLS = ["amqp://u:secret1@r1:5672//", "amqp://u:secret2@r2:5672//",
                "amqp://u:secret3@r3:5672//"]


def test_broker_url_takes_a_list_of_the_cluster_nodes_from_every_source(monkeypatch,
                                                                         tmp_path):
    joined = ";".join(CLUSTER_URLS)
    assert Settings(broker_url=CLUSTER_URLS).broker_url == joined
    assert Settings(broker_url=joined).broker_urls == CLUSTER_URLS
    path = write_toml(tmp_path / "c.toml", f"broker_url = {CLUSTER_URLS!r}\n".replace("'", '"'))
    assert Settings(_config_file=path).broker_urls == CLUSTER_URLS
    monkeypatch.setenv("ROGER_BROKER_URL", '["amqp://a:x@r1//", "amqp://a:y@r2//"]')
    assert Settings().broker_urls == ["amqp://a:x@r1//", "amqp://a:y@r2//"]


def test_a_list_of_broker_urls_keeps_every_password_out_of_sight():
    s = Settings(broker_url=CLUSTER_URLS)
    shown = repr(s) + s.safe_broker_url
    assert "secret" not in shown and shown.count("u:***@") == 6
    for bad in ([], ["amqp://u:secret1@r1//", "http://u:secret2@r2/"], "[not json"):
        with pytest.raises(ValidationError) as err:
            Settings(broker_url=bad)
        assert "secret" not in describe_validation_error(err.value)


def test_quorum_initial_group_size_is_sent_only_when_set():
    from roger.amqp.topology import queue_arguments

    default = queue_arguments(Settings(), "p", "q")
    assert all("x-quorum-initial-group-size" not in a for a in default.values())
    assert default["p-q"]["x-queue-type"] == "quorum"
    # The side queues are classic unless side_queue_type says quorum (a cluster).
    assert [a["x-queue-type"] for n, a in default.items() if n != "p-q"] == \
        ["classic"] * (len(default) - 1)
    sized = queue_arguments(Settings(quorum_initial_group_size=3, side_queue_type="quorum"),
                            "p", "q")
    assert all(a["x-queue-type"] == "quorum" and a["x-quorum-initial-group-size"] == 3
               for a in sized.values())
    retry = sized[[n for n in sized if ".retry." in n][0]]
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    classic = queue_arguments(Settings(queue_type="classic", quorum_initial_group_size=3),
                              "p", "q")
    assert all(a["x-queue-type"] == "classic" and "x-quorum-initial-group-size" not in a
               for a in classic.values())
    with pytest.raises(ValidationError):
        Settings(quorum_initial_group_size=0)
