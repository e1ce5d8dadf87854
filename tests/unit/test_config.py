"""ConsumerConfig: validation names the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from pyrallel import ConfigError, ConsumerConfig

BASE: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", "group_id": "g", "topics": ["t"]}


def make(**overrides: Any) -> ConsumerConfig:
    return ConsumerConfig(**{**BASE, **overrides})


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("ordering", "keyed", "one of 'key', 'partition', 'unordered'"),
        ("engine", "gevent", "one of 'async', 'process', 'thread'"),
        ("on_failure", "ignore", "one of 'stop', 'skip', 'dlq'"),
        ("max_in_flight_messages", -1, "an integer >= 1"),
        ("max_in_flight_messages", 0, "an integer >= 1"),
        ("max_in_flight_messages", True, "an integer >= 1"),
        ("process_count", 0, "an integer >= 1"),
        ("max_revoke_grace_ms", -5, "an integer >= 0"),
        ("commit_interval_ms", 0, "an integer >= 1"),
        ("handler_timeout_ms", 0, "an integer >= 1"),
        ("topics", "orders", "a non-empty list of topic names"),
        ("topics", [], "a non-empty list of topic names"),
        ("topics", ["ok", ""], "every topic name must be a non-empty string"),
        ("group_id", "", "a non-empty string"),
        ("bootstrap_servers", "  ", "a non-empty string"),
        ("dlq_topic", "", "a non-empty topic name or None"),
    ],
)
def test_bad_value_names_field_value_and_allowed(field: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**{field: value})
    err = info.value
    assert err.field == field
    assert err.value == value
    assert fragment in str(err)
    assert str(err).startswith(f"{field}={value!r} is invalid")


@pytest.mark.parametrize("key", ["enable.auto.commit", "enable.auto.offset.store", "on_commit"])
def test_owned_librdkafka_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="Pyrallel owns this setting") as info:
        make(kafka={key: True})
    assert info.value.field == f"kafka[{key!r}]"


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("group.id", "group_id"),
        ("bootstrap.servers", "bootstrap_servers"),
        ("max.poll.interval.ms", "max_poll_interval_ms"),
    ],
)
def test_keys_with_a_typed_field_point_to_the_field(key: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"set ConsumerConfig.{field} instead"):
        make(kafka={key: "x"})


def test_precedence_defaults_then_user_then_owned() -> None:
    user = {
        "auto.offset.reset": "latest",
        "fetch.wait.max.ms": 250,
        "security.protocol": "SASL_SSL",
    }
    cfg = make(
        kafka={**user, "session.timeout.ms": 6000}, max_poll_interval_ms=12_345, client_id="c1"
    )
    settings = cfg.consumer_settings()
    assert settings["auto.offset.reset"] == "latest"  # user beats Pyrallel default
    assert settings["fetch.wait.max.ms"] == 250
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["max.poll.interval.ms"] == 12_345
    assert settings["enable.auto.commit"] is False
    assert settings["enable.auto.offset.store"] is False
    assert settings["client.id"] == "c1"
    assert settings["group.id"] == "g"


def test_defaults_apply_when_user_is_silent() -> None:
    assert make().consumer_settings()["auto.offset.reset"] == "earliest"


def test_caller_dict_is_copied_not_mutated_and_config_is_frozen() -> None:
    user = {"fetch.wait.max.ms": 10}
    cfg = make(kafka=user)
    user["fetch.wait.max.ms"] = 999
    assert cfg.kafka["fetch.wait.max.ms"] == 10
    with pytest.raises(AttributeError):
        cfg.ordering = "unordered"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.kafka["x"] = 1  # type: ignore[index]
    assert cfg.topics == ("t",)


def test_secrets_are_redacted() -> None:
    cfg = make(kafka={"sasl.password": "hunter2", "ssl.key.password": "k", "sasl.username": "me"})
    red = cfg.redacted_kafka()
    assert red["sasl.password"] == "***"
    assert red["ssl.key.password"] == "***"
    assert red["sasl.username"] == "me"
    assert "hunter2" not in repr(red)


def test_client_ids_are_unique_per_config() -> None:
    assert make().client_id != make().client_id


def test_effective_counts() -> None:
    assert make(process_count=3).effective_process_count == 3
    assert make(max_in_flight_messages=10).effective_thread_count == 10
    assert make().dlq_topic_for("orders") == "orders.dlq"
    assert make(dlq_topic="dead").dlq_topic_for("orders") == "dead"


def test_librdkafka_refuses_unknown_key_at_construction() -> None:
    cfg = make(kafka={"fetch.wait.max.msx": 5})
    with pytest.raises(ConfigError) as info:
        cfg.check_with_librdkafka()
    assert info.value.field == "kafka['fetch.wait.max.msx']"
    assert "No such configuration property" in str(info.value)


def test_librdkafka_bad_secret_value_is_not_echoed() -> None:
    sasl = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    make(kafka={**sasl, "sasl.username": "me", "sasl.password": "hunter2"}).check_with_librdkafka()
    with pytest.raises(ConfigError) as missing:
        make(kafka={**sasl, "sasl.password": "hunter2"}).check_with_librdkafka()
    assert missing.value.field == "kafka"
    assert "sasl.username" in str(missing.value)
    assert "hunter2" not in str(missing.value)
    bad = make(kafka={"ssl.key.password": "hunter2", "security.protocol": "bogus"})
    with pytest.raises(ConfigError) as info:
        bad.check_with_librdkafka()
    assert "hunter2" not in str(info.value)
    assert info.value.field == "kafka['security.protocol']"


def test_secrets_never_in_repr_or_errors() -> None:
    secret = "HUNTER2pass"
    cfg = make(
        kafka={
            "sasl.oauthbearer.assertion.private.key.passphrase": secret,
            "sasl.password": secret,
            "ssl.keystore.password": secret,
            "sasl.oauthbearer.client.secret": secret,
        }
    )
    assert secret not in repr(cfg)
    assert secret not in str(cfg.redacted_kafka())
    with pytest.raises(ConfigError) as info:
        make(kafka={"sasl.passwrd": secret}).check_with_librdkafka()
    assert secret not in str(info.value)
    assert "sasl.passwrd" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"commit_metadata": "no"}, "commit_metadata", "True or False"),
        (
            {"retry_backoff_ms": 5000, "retry_backoff_max_ms": 10},
            "retry_backoff_max_ms",
            "at least retry_backoff_ms",
        ),
        ({"topics": ["a", "a"]}, "topics", "each topic once"),
        (
            {"max_poll_interval_ms": 1000},
            "max_poll_interval_ms",
            "at least session.timeout.ms (45000",
        ),
        (
            {"max_poll_interval_ms": 5000, "kafka": {"session.timeout.ms": 6000}},
            "max_poll_interval_ms",
            "at least session.timeout.ms (6000",
        ),
    ],
)
def test_fields_checked_against_each_other(
    overrides: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make(**overrides)
    assert info.value.field == field
    assert fragment in str(info.value)
