from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.settings import (
    DEV_KEY_PREFIX,
    KeyParseError,
    Mode,
    Settings,
    generate_dev_keys,
    parse_keys,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("p1:k1", {"k1": "p1"}, id="one"),
        pytest.param(" p1:k1 , p2:k2,p1:k3 ", {"k1": "p1", "k2": "p2", "k3": "p1"}, id="several"),
        pytest.param("p1:a:b", {"a:b": "p1"}, id="colon inside key"),
    ],
)
def test_parse_keys(spec: str, expected: dict[str, str]) -> None:
    assert parse_keys(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("nokey", id="no colon"),
        pytest.param(":k1", id="no project"),
        pytest.param("p1:", id="no key"),
        pytest.param("p1:k,p2:k", id="key of two projects"),
    ],
)
def test_parse_keys_rejects(spec: str) -> None:
    with pytest.raises(KeyParseError):
        parse_keys(spec)


def test_defaults_match_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("QUIP_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.listen_port(8080) == 8080
    assert str(settings.data_dir) == ".quip"
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.clickhouse_url == "clickhouse://127.0.0.1:9000/quip"
    assert (settings.influx_url, settings.influx_org, settings.influx_bucket) == (
        "http://127.0.0.1:8086",
        "quip",
        "quip",
    )
    assert settings.max_event_age_days == 30
    assert (settings.rate_limit_ip_per_min, settings.rate_limit_key_per_min) == (1000, 0)
    assert settings.play_idle_timeout_s == 300
    assert settings.funnels_file is None
    assert settings.cors_origin_list == []


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIP_WRITE_KEYS", "vr:wk1,web:wk2")
    monkeypatch.setenv("QUIP_PORT", "9001")
    monkeypatch.setenv("QUIP_CORS_ORIGINS", "https://a.test, https://b.test")
    settings = Settings()
    assert settings.write_key_projects == {"wk1": "vr", "wk2": "web"}
    assert settings.listen_port(8080) == 9001
    assert settings.cors_origin_list == ["https://a.test", "https://b.test"]
    assert "wk1" not in repr(settings)


def test_malformed_keys_fail_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIP_READ_KEYS", "oops")
    with pytest.raises(ValidationError, match="QUIP_READ_KEYS"):
        Settings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"write_keys": generate_dev_keys()}, "dev key", id="dev write key"),
        pytest.param({"admin_keys": f"p:{DEV_KEY_PREFIX}x"}, "QUIP_ADMIN_KEYS", id="dev admin key"),
        pytest.param({"cors_origins": "*"}, "CORS", id="wildcard cors"),
    ],
)
def test_cluster_mode_refuses_laptop_defaults(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(mode=Mode.CLUSTER, **overrides)  # type: ignore[arg-type]
    Settings(mode=Mode.EMBEDDED, **overrides)  # type: ignore[arg-type]


def test_cluster_mode_requires_keys_where_used() -> None:
    settings = Settings(mode=Mode.CLUSTER, write_keys="p:real", read_keys="")  # type: ignore[arg-type]
    settings.require_keys("write_keys")
    with pytest.raises(ValueError, match="QUIP_READ_KEYS"):
        settings.require_keys("write_keys", "read_keys")
    Settings(mode=Mode.EMBEDDED).require_keys("read_keys")
