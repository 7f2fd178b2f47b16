"""One configuration object: defaults < conf.json < credentials.json < THERMAL_<SECTION>_<KEY>.

`load` is the only function here that reads files; everything else is pure. Secrets (the MQTT
password / TTN API key, the MySQL password, API tokens) are masked in `repr` and never logged.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from bridge.alarms import AlarmRuleError, AlarmRules, rules_with

DEFAULT_WEB_PORT = 3002
FRAME_TIMEOUT_S = 1800.0
OFFLINE_AFTER_S = 300.0
SETTINGS_PER_DAY = 10  # TTN fair-use policy: about 10 downlinks per node per day
FRAMES_RETENTION_DAYS = 90
UPLINKS_RETENTION_DAYS = 30
SUMMARIES_RETENTION_DAYS = 3650
METRICS_PORT = 9108  # python -m bridge's own /metrics (the webapp serves its own at /metrics)
ENV_PREFIX = "THERMAL_"


class ConfigError(ValueError):
    """A configuration value that is missing or malformed; the message names the key."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never shows itself in repr, str or logs."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class MqttConfig:
    """How to reach the TTN (or Pub/Sub) MQTT broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    tls_insecure_allowed: bool = False
    ca_certs: str | None = None
    app_id: str = "thermal-demo"
    tenant: str = "ttn"
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = None
    qos: int = 1
    keepalive_s: int = 60
    uplink_topic: str | None = None
    event_topic: str | None = None
    downlink_topic: str | None = None

    @property
    def app_user(self) -> str:
        """TTN's MQTT username: `{app_id}@{tenant}`."""
        return f"{self.app_id}@{self.tenant}"

    @property
    def effective_username(self) -> str | None:
        """The username to send: explicit, else `{app_id}@{tenant}`; None when anonymous."""
        if self.password is None:
            return self.username
        return self.username or self.app_user

    def topic_uplinks(self) -> str:
        """Subscription for uplinks."""
        return self.uplink_topic or f"v3/{self.app_user}/devices/+/up"

    def topics_events(self) -> list[str]:
        """Subscriptions for downlink events."""
        if self.event_topic:
            return [self.event_topic]
        return [
            f"v3/{self.app_user}/devices/+/down/{kind}"
            for kind in ("queued", "sent", "ack", "nack", "failed")
        ]

    def topic_downlink(self, device_id: str) -> str:
        """Where settings downlinks are published (`down/replace`)."""
        template = self.downlink_topic or "v3/{app_user}/devices/{device_id}/down/replace"
        return template.format(app_user=self.app_user, device_id=device_id, app_id=self.app_id)


@dataclass(frozen=True)
class MysqlConfig:
    """credentials.json `mysql`: absent means the embedded SQLite default."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: Secret | None = None
    database: str = "thermal"


@dataclass(frozen=True)
class Config:
    """Everything the bridge, the webapp and the simulator are configured with."""

    mqtt: MqttConfig = field(default_factory=MqttConfig)
    mysql: MysqlConfig | None = None
    sqlite_path: str = "var/thermal.sqlite3"
    database_url: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = DEFAULT_WEB_PORT
    default_device: str | None = None
    frame_timeout_s: float = FRAME_TIMEOUT_S
    offline_after_s: float = OFFLINE_AFTER_S
    alarm_rules: AlarmRules = field(default_factory=AlarmRules)  # DESIGN.md "Alarm rules"
    settings_per_day: int = SETTINGS_PER_DAY
    message_queue: str | None = None
    storage_integration_url: str | None = None
    storage_integration_api_key: Secret | None = None
    api_tokens: tuple[Secret, ...] = ()
    read_tokens: tuple[Secret, ...] = ()
    reads_open: bool = True
    colormap: str = "inferno"
    rotate: int = 0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    uplink_retention_days: int = UPLINKS_RETENTION_DAYS
    frames_retention_days: int = FRAMES_RETENTION_DAYS
    summaries_retention_days: int = SUMMARIES_RETENTION_DAYS
    metrics_host: str = "127.0.0.1"
    metrics_port: int = METRICS_PORT  # 0: python -m bridge serves no metrics
    run_bridge: bool = True
    log_level: str = "INFO"

    def db_url(self) -> str:
        """The SQLAlchemy URL: explicit, else MySQL from credentials, else SQLite under var/."""
        if self.database_url:
            return self.database_url
        if self.mysql is not None:
            m = self.mysql
            auth = quote_plus(m.user)
            if m.password:
                auth += ":" + quote_plus(m.password.value)
            return f"mysql+pymysql://{auth}@{m.host}:{m.port}/{m.database}?charset=utf8mb4"
        return f"sqlite:///{self.sqlite_path}"

    def tokens_required(self) -> bool:
        """True when writes (and sockets) need a bearer token."""
        return bool(self.api_tokens)

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with some top-level fields replaced (tests, the demo)."""
        return replace(self, **changes)


# --- loading ------------------------------------------------------------------------------

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_TRUE | _BOOL_FALSE:
        return value.strip().lower() in _BOOL_TRUE
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _as_int(key: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None


def _as_float(key: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None


def _as_str(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
    return str(value)


def _read_json(path: str | os.PathLike[str] | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {p} must hold a JSON object")
    return data


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# Environment overrides: THERMAL_<SECTION>_<KEY> for nested keys, THERMAL_<KEY> for top level.
_SECTIONS = (
    "mqtt",
    "web",
    "mysql",
    "storage_integration",
    "alarms",
    "imaging",
    "database",
    "metrics",
    "retention",
)


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest in ("config", "credentials"):
            continue
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                tree.setdefault(section, {})[rest[len(section) + 1 :]] = value
                break
        else:
            tree[rest] = value
    return tree


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from merged conf + credentials + environment data."""
    mqtt_in = dict(data.get("mqtt") or {})
    topics = mqtt_in.pop("topics", None) or {}
    password = mqtt_in.get("password")
    mqtt = MqttConfig(
        host=_as_str("mqtt.host", mqtt_in.get("host", MqttConfig.host)),
        port=_as_int("mqtt.port", mqtt_in.get("port", MqttConfig.port)),
        tls=_as_bool("mqtt.tls", mqtt_in.get("tls", False)),
        tls_insecure_allowed=_as_bool("mqtt.allow_insecure", mqtt_in.get("allow_insecure", False)),
        ca_certs=mqtt_in.get("ca_certs"),
        app_id=_as_str("mqtt.app_id", mqtt_in.get("app_id", MqttConfig.app_id)),
        tenant=_as_str("mqtt.tenant", mqtt_in.get("tenant", MqttConfig.tenant)),
        client_id=mqtt_in.get("client_id"),
        username=mqtt_in.get("username"),
        password=Secret(_as_str("mqtt.password", password)) if password else None,
        qos=_as_int("mqtt.qos", mqtt_in.get("qos", 1)),
        keepalive_s=_as_int("mqtt.keepalive_s", mqtt_in.get("keepalive_s", 60)),
        uplink_topic=topics.get("uplink") or mqtt_in.get("uplink_topic"),
        event_topic=topics.get("events") or mqtt_in.get("event_topic"),
        downlink_topic=topics.get("downlink") or mqtt_in.get("downlink_topic"),
    )
    if mqtt.qos not in (0, 1):
        raise ConfigError(f"mqtt.qos must be 0 or 1, got {mqtt.qos}")
    if not 0 < mqtt.port < 65536:
        raise ConfigError(f"mqtt.port must be 1..65535, got {mqtt.port}")

    mysql: MysqlConfig | None = None
    if data.get("mysql"):
        m = dict(data["mysql"])
        mysql = MysqlConfig(
            host=_as_str("mysql.host", m.get("host", MysqlConfig.host)),
            port=_as_int("mysql.port", m.get("port", MysqlConfig.port)),
            user=_as_str("mysql.user", m.get("user", MysqlConfig.user)),
            password=Secret(_as_str("mysql.password", m["password"]))
            if m.get("password")
            else None,
            database=_as_str("mysql.database", m.get("database", MysqlConfig.database)),
        )

    web = dict(data.get("web") or {})
    si = dict(data.get("storage_integration") or {})
    alarms = dict(data.get("alarms") or {})
    imaging = dict(data.get("imaging") or {})
    database = dict(data.get("database") or {})
    retention = dict(data.get("retention") or {})
    metrics = dict(data.get("metrics") or {})

    def tokens(key: str) -> tuple[Secret, ...]:
        raw = data.get(key) or ()
        if isinstance(raw, str):
            raw = [t for t in raw.split(",") if t.strip()]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key} must be a list of strings")
        return tuple(Secret(_as_str(key, t).strip()) for t in raw)

    si_key = si.get("api_key") or (password if si.get("url") else None)
    rotate = _as_int("imaging.rotate", imaging.get("rotate", 0))
    if rotate not in (0, 90, 180, 270):
        raise ConfigError(f"imaging.rotate must be 0, 90, 180 or 270, got {rotate}")
    config = Config(
        mqtt=mqtt,
        mysql=mysql,
        sqlite_path=_as_str(
            "database.sqlite_path", database.get("sqlite_path", Config.sqlite_path)
        ),
        database_url=database.get("url") or data.get("database_url"),
        web_host=_as_str("web.host", web.get("host", Config.web_host)),
        web_port=_as_int("web.port", web.get("port", Config.web_port)),
        default_device=data.get("default_device"),
        frame_timeout_s=_as_float("frame_timeout_s", data.get("frame_timeout_s", FRAME_TIMEOUT_S)),
        offline_after_s=_as_float("offline_after_s", data.get("offline_after_s", OFFLINE_AFTER_S)),
        alarm_rules=_alarm_rules(alarms),
        settings_per_day=_as_int(
            "settings_per_day", data.get("settings_per_day", SETTINGS_PER_DAY)
        ),
        message_queue=data.get("message_queue") or None,
        storage_integration_url=si.get("url") or None,
        storage_integration_api_key=Secret(_as_str("storage_integration.api_key", si_key))
        if si_key
        else None,
        api_tokens=tokens("api_tokens"),
        read_tokens=tokens("read_tokens"),
        reads_open=_as_bool("web.reads_open", web.get("reads_open", True)),
        colormap=_as_str("imaging.colormap", imaging.get("colormap", Config.colormap)),
        rotate=rotate,
        flip_horizontal=_as_bool("imaging.flip_horizontal", imaging.get("flip_horizontal", False)),
        flip_vertical=_as_bool("imaging.flip_vertical", imaging.get("flip_vertical", False)),
        # retention.uplinks_days; the first release's uplink_retention_days is still read.
        uplink_retention_days=_as_int(
            "retention.uplinks_days",
            retention.get(
                "uplinks_days", data.get("uplink_retention_days", UPLINKS_RETENTION_DAYS)
            ),
        ),
        frames_retention_days=_as_int(
            "retention.frames_days", retention.get("frames_days", FRAMES_RETENTION_DAYS)
        ),
        summaries_retention_days=_as_int(
            "retention.summaries_days",
            retention.get("summaries_days", SUMMARIES_RETENTION_DAYS),
        ),
        metrics_host=_as_str("metrics.host", metrics.get("host", Config.metrics_host)),
        metrics_port=_as_int("metrics.port", metrics.get("port", METRICS_PORT)),
        log_level=_as_str("log_level", data.get("log_level", "INFO")).upper(),
        run_bridge=_as_bool("run_bridge", data.get("run_bridge", True)),
    )
    if config.frame_timeout_s <= 0:
        raise ConfigError("frame_timeout_s must be positive")
    if config.offline_after_s <= 0:
        raise ConfigError("offline_after_s must be positive")
    for key, days in (
        ("retention.uplinks_days", config.uplink_retention_days),
        ("retention.frames_days", config.frames_retention_days),
        ("retention.summaries_days", config.summaries_retention_days),
    ):
        if days < 1:
            raise ConfigError(f"{key} must be at least 1 (days), got {days}")
    if not 0 <= config.metrics_port < 65536:
        raise ConfigError(f"metrics.port must be 0..65535, got {config.metrics_port}")
    return config


def _alarm_rules(section: Mapping[str, Any]) -> AlarmRules:
    """The `alarms` section as rules; environment values arrive as strings."""
    values: dict[str, object] = {}
    for key, value in section.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        values[key] = value
    try:
        return rules_with(AlarmRules(), values)
    except AlarmRuleError as exc:
        raise ConfigError(f"alarms: {exc}") from None


def load(
    conf_path: str | os.PathLike[str] | None = None,
    credentials_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read conf.json and credentials.json (either may be None) and apply env overrides."""
    env = os.environ if environ is None else environ
    conf = _read_json(conf_path, "conf")
    creds = _read_json(credentials_path, "credentials")
    merged = _deep_merge(_deep_merge(conf, creds), _env_tree(env))
    return from_mapping(merged)


def public_dict(config: Config) -> dict[str, Any]:
    """The configuration with every secret masked (for logs and diagnostics)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("mqtt", "mysql") and value is not None:
            value = {g.name: getattr(value, g.name) for g in fields(value)}
            value = {k: ("***" if isinstance(v, Secret) else v) for k, v in value.items()}
        elif isinstance(value, Secret):
            value = "***"
        elif isinstance(value, tuple) and value and isinstance(value[0], Secret):
            value = [f"*** ({len(value)} tokens)"]
        out[f.name] = value
    return out
