"""Settings: every source, and a one-line reason naming the setting when a value is bad."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import DEFAULT_WEIGHTS, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("INTEREST_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_contract() -> None:
    s = load_settings()
    assert s.kafka_bootstrap == "localhost:9092"
    assert (s.topic_events, s.topic_dlq, s.topic_recommendations) == (
        "interest.events",
        "interest.events.dlq",
        "interest.recommendations",
    )
    assert s.half_life_short_ms == 30 * 60_000 and s.half_life_long_ms == 7 * 86_400_000
    assert s.event_weights == DEFAULT_WEIGHTS
    assert s.type_table()["pv"] == "browse" and s.type_table()["purchase"] == "purchase"
    assert (s.rescore_interval_ms, s.top_k, s.scorer.value, s.web_port) == (500, 20, "local", 6066)
    assert (s.max_categories, s.max_items, s.events_partitions) == (64, 100, 8)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_TOP_K", "7")
    monkeypatch.setenv("INTEREST_EVENT_WEIGHTS", '{"browse": 1, "share": -2.5}')
    monkeypatch.setenv("INTEREST_EVENT_ALIASES", '{"view": "browse"}')
    s = load_settings()
    assert s.top_k == 7
    assert s.event_weights == {"browse": 1.0, "share": -2.5}


def test_toml_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "interest.toml"
    cfg.write_text('[interest]\ntop_k = 5\nweb_port = 7000\ndata_dir = "/tmp/x"\n')
    s = load_settings(cfg)
    assert (s.top_k, s.web_port, str(s.data_dir)) == (5, 7000, "/tmp/x")
    monkeypatch.setenv("INTEREST_TOP_K", "9")
    assert load_settings(cfg).top_k == 9
    assert load_settings(cfg, {"top_k": 11}).top_k == 11


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("INTEREST_TOP_K", "zero", "INTEREST_TOP_K"),
        ("INTEREST_TOP_K", "0", "INTEREST_TOP_K"),
        ("INTEREST_SCORER", "magic", "local"),
        ("INTEREST_KAFKA_BOOTSTRAP", "nohostport", "INTEREST_KAFKA_BOOTSTRAP"),
        ("INTEREST_KAFKA_SECURITY_PROTOCOL", "TLS", "SASL_SSL"),
        ("INTEREST_HALF_LIFE_SHORT_MS", "-1", "INTEREST_HALF_LIFE_SHORT_MS"),
        ("INTEREST_LOG_LEVEL", "LOUD", "INTEREST_LOG_LEVEL"),
        ("INTEREST_SEQUENCE_LENGTH", "-1", "INTEREST_SEQUENCE_LENGTH"),
        ("INTEREST_SEQUENCE_DIM", "31", "INTEREST_SEQUENCE_HEADS"),  # 2 heads by default
        ("INTEREST_SEQUENCE_BLOCKS", "0", "INTEREST_SEQUENCE_BLOCKS"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_sasl_needs_credentials_and_keeps_the_password_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INTEREST_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="INTEREST_KAFKA_SASL_USERNAME"):
        load_settings()
    monkeypatch.setenv("INTEREST_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("INTEREST_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("INTEREST_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.redacted())
    from stream.worker.kafka_clients import confluent_config

    conf = confluent_config(s)
    assert conf["sasl.password"] == "hunter2" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["security.protocol"] == "SASL_SSL"


def test_alias_to_unknown_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_EVENT_ALIASES", '{"zap": "teleport"}')
    with pytest.raises(SettingsError, match="teleport"):
        load_settings()


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("top_kk = 3\n")
    with pytest.raises(SettingsError, match="INTEREST_TOP_KK"):
        load_settings(cfg)


def test_every_contract_setting_exists() -> None:
    names = set(Settings.model_fields)
    for field in (
        "kafka_bootstrap",
        "topic_events",
        "topic_dlq",
        "topic_recommendations",
        "half_life_short_ms",
        "half_life_long_ms",
        "event_weights",
        "rescore_interval_ms",
        "top_k",
        "scorer",
        "tfserving_url",
        "model_dir",
        "data_dir",
        "web_port",
    ):
        assert field in names


def test_connect_timeout_defaults_to_10_s_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().kafka_connect_timeout_s == 10.0
    monkeypatch.setenv("INTEREST_KAFKA_CONNECT_TIMEOUT_S", "2.5")
    assert load_settings().kafka_connect_timeout_s == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("INTEREST_KAFKA_CONNECT_TIMEOUT_S", bad)
        with pytest.raises(SettingsError, match="INTEREST_KAFKA_CONNECT_TIMEOUT_S"):
            load_settings()
