"""Configuration: defaults < conf.json < credentials.json < environment; secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.config import ConfigError, load, public_dict


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_defaults_give_the_embedded_sqlite_database() -> None:
    cfg = load(None, None, environ={})
    assert cfg.db_url() == "sqlite:///var/thermal.sqlite3"
    assert cfg.mqtt.topic_uplinks() == "v3/thermal-demo@ttn/devices/+/up"
    assert cfg.web_port == 3002 and cfg.frame_timeout_s == 1800 and cfg.offline_after_s == 300


def test_files_and_environment_layer_in_order(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf.json",
        {
            "mqtt": {"host": "broker", "app_id": "app1", "tls": True, "port": 8883},
            "default_device": "node7",
            "frame_timeout_s": 60,
        },
    )
    creds = write(
        tmp_path / "credentials.json",
        {
            "mqtt": {"password": "NNSXS.SECRET"},
            "mysql": {"host": "db", "user": "u", "password": "p@ss", "database": "thermal"},
            "api_tokens": ["tok1"],
        },
    )
    cfg = load(
        conf,
        creds,
        environ={
            "THERMAL_MQTT_HOST": "other",
            "THERMAL_WEB_PORT": "8080",
            "THERMAL_OFFLINE_AFTER_S": "42",
        },
    )
    assert cfg.mqtt.host == "other" and cfg.mqtt.port == 8883 and cfg.mqtt.tls
    assert cfg.mqtt.effective_username == "app1@ttn"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.value == "NNSXS.SECRET"
    assert cfg.web_port == 8080 and cfg.offline_after_s == 42 and cfg.frame_timeout_s == 60
    assert cfg.default_device == "node7"
    assert cfg.db_url() == "mysql+pymysql://u:p%40ss@db:3306/thermal?charset=utf8mb4"
    assert cfg.tokens_required()
    assert cfg.storage_integration_api_key is None  # no storage_integration.url configured
    assert cfg.mqtt.topic_downlink("node1") == "v3/app1@ttn/devices/node1/down/replace"


def test_secrets_never_show_in_repr_or_public_dict(tmp_path: Path) -> None:
    creds = write(
        tmp_path / "c.json",
        {
            "mqtt": {"password": "NNSXS.TOPSECRET"},
            "mysql": {"password": "dbsecret"},
            "api_tokens": ["tokensecret"],
        },
    )
    cfg = load(None, creds, environ={})
    text = repr(cfg) + json.dumps(public_dict(cfg), default=str)
    for secret in ("NNSXS.TOPSECRET", "dbsecret", "tokensecret"):
        assert secret not in text


def test_anonymous_broker_when_no_password() -> None:
    cfg = load(None, None, environ={})
    assert cfg.mqtt.effective_username is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"port": "abc"}}, "mqtt.port must be an integer"),
        ({"mqtt": {"tls": "maybe"}}, "mqtt.tls must be true or false"),
        ({"frame_timeout_s": -1}, "frame_timeout_s must be positive"),
        ({"imaging": {"rotate": 45}}, "imaging.rotate"),
        ({"api_tokens": 5}, "api_tokens must be a list"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path / "conf.json", data), None, environ={})


def test_missing_or_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.json", None, environ={})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(bad, None, environ={})


def test_topics_are_configurable_for_pubsub(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "conf.json",
        {
            "mqtt": {
                "topics": {
                    "uplink": "site/+/up",
                    "events": "site/+/events/#",
                    "downlink": "site/{device_id}/replace",
                }
            }
        },
    )
    cfg = load(conf, None, environ={})
    assert cfg.mqtt.topic_uplinks() == "site/+/up"
    assert cfg.mqtt.topics_events() == ["site/+/events/#"]
    assert cfg.mqtt.topic_downlink("n1") == "site/n1/replace"


def test_alarm_rules_come_from_conf_and_environment_and_a_bad_one_is_named(
    tmp_path: Path,
) -> None:
    assert load(None, None, environ={}).alarm_rules.clear_after_frames == 2
    conf = write(tmp_path / "conf.json", {"alarms": {"hysteresis_c": 3, "rise_window_s": 300}})
    cfg = load(conf, None, environ={"THERMAL_ALARMS_CLEAR_AFTER_FRAMES": "4"})
    assert cfg.alarm_rules.hysteresis_c == 3.0 and cfg.alarm_rules.rise_window_s == 300.0
    assert cfg.alarm_rules.clear_after_frames == 4
    with pytest.raises(ConfigError, match="alarms: clear_after_frames must be an integer"):
        load(conf, None, environ={"THERMAL_ALARMS_CLEAR_AFTER_FRAMES": "many"})
    bad = write(tmp_path / "bad.json", {"alarms": {"hysterisis_c": 3}})
    with pytest.raises(ConfigError, match="unknown alarm rule 'hysterisis_c'"):
        load(bad, None, environ={})
