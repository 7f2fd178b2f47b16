"""Security: no secret in logs, errors or responses; scoped bearer tokens compared in constant
time; TLS to the broker verified and required for a non-loopback broker.

The secret-grep test runs the whole system with every secret configured — the MQTT password
(TTN API key), the Storage Integration key, a MariaDB user with a password, a write token and a
read token — with all logging at DEBUG, through the real broker and database, a database outage
included, then greps every log line, every subprocess's output, every HTTP response and every
Socket.IO event for each secret value.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge import config as config_mod
from bridge.config import Config, ConfigError, MqttConfig, Secret
from bridge.mqtt import MqttAdapter
from node_firmware.simulator import Simulator, StorageIntegrationServer
from tests.services import service_down
from tests.ttn_messages import APP_ID, TENANT
from tests.waiting import wait_for
from webapp import auth, create_app, socketio

ROOT = Path(__file__).resolve().parents[1]


class Capture(logging.Handler):
    """Every log record of every logger, formatted with its traceback, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is a finding too
            self.lines.append(f"UNFORMATTABLE {record.name}: {exc!r}")


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    root = logging.getLogger()
    capture = Capture()
    # SQLAlchemy and paho are quiet unless asked: ask them too (statements, pool, packets).
    quiet = {name: logging.getLogger(name).level for name in ("sqlalchemy", "paho")}
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    logging.getLogger("sqlalchemy").setLevel(logging.INFO)
    logging.getLogger("sqlalchemy.pool").setLevel(logging.DEBUG)
    logging.getLogger("paho").setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


def db_user_with_password(mariadb_server: Any, mysql_url: str, password: str) -> tuple[str, str]:
    """A MariaDB user that needs `password`, granted the test's database; (user, database)."""
    database = urlsplit(mysql_url).path.lstrip("/")
    user = f"sec_{secrets.token_hex(4)}"
    conn = mariadb_server.connect()
    try:
        with conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost", "%"):
                quoted = conn.escape(password)
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY {quoted}")
                cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'{host}'")
    finally:
        conn.close()
    return user, database


@pytest.mark.integration
def test_no_secret_reaches_logs_errors_or_responses(
    mqtt_broker: Any,
    mariadb_server: Any,
    mysql_url: str,
    tmp_path: Path,
    debug_logs: Capture,
) -> None:
    mqtt_password = f"NNSXS.MQTT-{secrets.token_hex(16)}"
    storage_key = f"NNSXS.STORAGE-{secrets.token_hex(16)}"
    db_password = f"dbpw-{secrets.token_hex(16)}"
    write_token = f"write-{secrets.token_hex(16)}"
    read_token = f"read-{secrets.token_hex(16)}"
    all_secrets = {
        "mqtt.password": mqtt_password,
        "storage_integration.api_key": storage_key,
        "mysql.password": db_password,
        "api_tokens": write_token,
        "read_tokens": read_token,
    }
    user, database = db_user_with_password(mariadb_server, mysql_url, db_password)

    simulator = Simulator(
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        app_id=APP_ID,
        tenant=TENANT,
        nodes=2,
        interval_s=0.05,
        mode="fast",
        seed=11,
        loss=0.15,  # f_cnt gaps: the bridge asks the Storage Integration (with its key)
        password=mqtt_password,
    )
    storage = StorageIntegrationServer(simulator.storage, APP_ID, storage_key).start()
    conf = {
        "mqtt": {
            "host": mqtt_broker.host,
            "port": mqtt_broker.port,
            "app_id": APP_ID,
            "tenant": TENANT,
            "client_id": f"sec-bridge-{secrets.token_hex(3)}",
        },
        "web": {"reads_open": False},
        "default_device": "node1",
        "frame_timeout_s": 600,
        "log_level": "DEBUG",
        "storage_integration": {"url": storage.url},
    }
    credentials = {
        "mqtt": {"password": mqtt_password},
        "mysql": {
            "host": mariadb_server.host,
            "port": mariadb_server.port,
            "user": user,
            "password": db_password,
            "database": database,
        },
        "storage_integration": {"api_key": storage_key},
        "api_tokens": [write_token],
        "read_tokens": [read_token],
    }
    conf_path, creds_path = tmp_path / "conf.json", tmp_path / "credentials.json"
    conf_path.write_text(json.dumps(conf))
    creds_path.write_text(json.dumps(credentials))
    config = config_mod.load(conf_path, creds_path, environ={})
    assert config.db_url().count(db_password) == 1  # the password is really used to connect

    seen: list[str] = []  # every response and event, as text

    def record(response: Any) -> Any:
        seen.append(f"{response.status_code} {dict(response.headers)} {response.get_data()!r}")
        return response

    app = create_app(config, start_bridge=True)
    app.config["TESTING"] = True
    runtime = app.extensions["thermal"]
    runtime.mqtt.client.enable_logger(logging.getLogger("paho.bridge"))
    http = app.test_client()
    read = {"Authorization": f"Bearer {read_token}"}
    write = {"Authorization": f"Bearer {write_token}"}
    try:
        wait_for(runtime.mqtt.connected.is_set, what="the bridge to connect")
        simulator.start()
        assert simulator._client is not None
        simulator._client.enable_logger(logging.getLogger("paho.simulator"))
        refused = [
            socketio.test_client(app),
            socketio.test_client(app, auth={"token": "guess"}),
            socketio.test_client(app, auth={"token": write_token + "x"}),
        ]
        assert not any(c.is_connected() for c in refused)
        watcher = socketio.test_client(app, auth={"token": read_token})
        assert watcher.is_connected()
        watcher.emit("subscribe", {"devices": "*"})
        events: list[dict[str, Any]] = []

        def frames() -> list[dict[str, Any]]:
            events.extend(watcher.get_received())
            return [e for e in events if e["name"] == "frame"]

        wait_for(lambda: len(frames()) >= 4, what="frames pushed to the read-token socket")
        wait_for(lambda: storage.requests[200] >= 1, what="a backfill with the storage key")
        wait_for(lambda: runtime.bridge.backfiller.fetched > 0, what="the backfill to finish")
        assert storage.requests[401] == 0

        # Reads: refused without or with a wrong token, served with either token.
        assert record(http.get("/api/devices")).status_code == 401
        assert (
            record(http.get("/api/devices", headers={"Authorization": "Bearer x"})).status_code
            == 401
        )
        for headers in (read, write):
            assert record(http.get("/api/devices", headers=headers)).status_code == 200
        frame_id = record(http.get("/api/devices/node1/frames", headers=read)).json["frames"][0][
            "frame_id"
        ]
        for url in (
            "/api/health",
            "/api/devices/node1",
            f"/api/frames/{frame_id}",
            f"/api/frames/{frame_id}.png",
            f"/api/frames/{frame_id}.csv",
            f"/api/frames/{frame_id}/histogram",
            "/api/devices/node1/frames.csv",
            "/api/devices/node1/ambient",
            "/api/devices/node1/downlinks",
            "/api/alarms",
            "/api/openapi.json",
            "/api/devices/ghost",
            "/api/devices?limit=99999999",
            "/",
            "/devices/node1",
        ):
            assert record(http.get(url, headers=read)).status_code < 500, url
        # Writes: the read token may not write; the write token may.
        url = "/api/devices/node1/settings"
        assert record(http.post(url, json={"fan": "on"})).status_code == 401
        assert record(http.post(url, json={"fan": "on"}, headers=read)).status_code == 403
        assert record(http.post(url, data="fan=on", headers=write)).status_code == 415
        assert record(http.post(url, json={"threshold": 999}, headers=write)).status_code == 400
        assert record(http.post(url, json={"fan": "on"}, headers=write)).status_code == 202
        assert record(http.post("/request", json={"fan": "off"}, headers=read)).status_code == 401
        # It reaches the simulated network (applied needs a status uplink, which may be lost).
        downlinks = "/api/devices/node1/downlinks"
        wait_for(
            lambda: (
                record(http.get(downlinks, headers=read)).json["downlinks"][0]["status"]
                in ("sent", "acked", "applied")
            ),
            what="the settings downlink to be sent",
        )

        # The database goes away (error paths log and answer), then comes back.
        handled = runtime.bridge.metrics["uplinks"]
        with service_down(mariadb_server):
            health = record(http.get("/api/health", headers=read))
            assert health.status_code == 503 and health.json["database"] == "unreachable"
            assert record(http.get("/api/devices", headers=read)).status_code == 503
            assert record(http.post(url, json={"fan": "off"}, headers=write)).status_code == 503
            wait_for(lambda: runtime.mqtt.storage_down, what="the bridge to see the outage")
        wait_for(
            lambda: record(http.get("/api/health", headers=read)).status_code == 200,
            what="health to recover",
        )
        wait_for(lambda: runtime.bridge.metrics["uplinks"] > handled + 4, what="ingest resumes")
        events.extend(watcher.get_received())
        seen.extend(json.dumps(e, default=repr) for e in events)
        watcher.disconnect()
    finally:
        simulator.stop()
        runtime.stop()
        runtime.store.engine.dispose()
        storage.stop()

    # The command-line tools, at DEBUG, with the same files: a good run and a wrong password.
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMAL_")}
    env["PYTHONPATH"] = str(ROOT)
    tools = [
        [
            sys.executable,
            "-m",
            "db",
            "upgrade",
            "--config",
            str(conf_path),
            "--credentials",
            str(creds_path),
        ],
    ]
    wrong = dict(credentials, mysql={**credentials["mysql"], "password": db_password[::-1]})
    wrong_path = tmp_path / "wrong-credentials.json"
    wrong_path.write_text(json.dumps(wrong))
    all_secrets["wrong mysql.password"] = db_password[::-1]
    tools.append(
        [
            sys.executable,
            "-m",
            "bridge",
            "--config",
            str(conf_path),
            "--credentials",
            str(wrong_path),
        ]
    )
    outputs = []
    for command in tools:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        outputs.append(done.stdout + done.stderr)
    # And the bridge process running for real (DEBUG from conf.json) until it is stopped.
    out_path = tmp_path / "bridge.out"
    with out_path.open("wb") as out:
        bridge = subprocess.Popen(
            [*tools[1][:-1], str(creds_path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "bridge running" in out_path.read_text(), what="the bridge process")
        wait_for(lambda: "connected to MQTT" in out_path.read_text(), what="it to connect")
    finally:
        bridge.terminate()
        bridge.wait(30)
    outputs.append(out_path.read_text())
    assert "schema version" in outputs[0]
    assert "Access denied" in outputs[1]  # the failure is explained ...

    logs = "\n".join(debug_logs.lines)
    assert "backfill after" in logs and "database unavailable" in logs  # the paths ran
    assert any(line.startswith("DEBUG sqlalchemy") for line in debug_logs.lines)
    assert any(line.startswith("DEBUG paho") for line in debug_logs.lines)
    assert len(seen) > 30
    haystacks = {"logs": logs, "responses and events": "\n".join(seen), "tools": "\n".join(outputs)}
    for where, text in haystacks.items():
        for name, value in all_secrets.items():
            assert value not in text, f"{name} leaked into {where}"  # ... without the secret


# --- tokens ---------------------------------------------------------------------------------


def token_config(**overrides: Any) -> Config:
    return Config(
        api_tokens=(Secret("w1-token"), Secret("w2-token")),
        read_tokens=(Secret("r1-token"),),
        **overrides,
    )


def test_tokens_are_scoped_read_and_write() -> None:
    closed = token_config(reads_open=False)
    assert auth.can_write(closed, "w2-token") and auth.can_read(closed, "w2-token")
    assert auth.can_read(closed, "r1-token") and not auth.can_write(closed, "r1-token")
    for token in (None, "", "w1-toke", "w1-token ", "W1-TOKEN", "r1-token\x00"):
        assert not auth.can_write(closed, token) and not auth.can_read(closed, token)
    opened = token_config()
    assert auth.can_read(opened, None) and not auth.can_write(opened, None)
    assert auth.can_write(Config(), None)  # no tokens configured: no authentication
    assert auth.bearer("Bearer  abc ") == "abc" and auth.bearer("Basic abc") is None


def test_every_configured_token_is_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    config = token_config(reads_open=False)
    assert auth.can_write(config, "w1-token")
    # A match on the first token still compares against the second: no early exit.
    assert [b for _, b in calls] == [b"w1-token", b"w2-token"]
    calls.clear()
    assert not auth.can_read(config, "nope")
    assert [b for _, b in calls] == [b"w1-token", b"w2-token", b"r1-token"]


# --- TLS to the broker ----------------------------------------------------------------------


def adapter_for(**mqtt: Any) -> MqttAdapter:
    return MqttAdapter(MqttConfig(**mqtt), lambda body: None)


@pytest.mark.parametrize("host", ["eu1.cloud.thethings.network", "10.0.0.7", "::ffff:1.2.3.4"])
def test_tls_off_to_a_non_loopback_broker_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="clear text"):
        adapter_for(host=host, port=1883, tls=False)
    adapter_for(host=host, port=1883, tls=False, tls_insecure_allowed=True)  # explicitly allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_tls_off_to_a_loopback_broker_is_allowed(host: str) -> None:
    adapter_for(host=host, port=1883, tls=False)


def test_tls_verifies_the_certificate_and_the_host_name() -> None:
    adapter = adapter_for(host="eu1.cloud.thethings.network", port=8883, tls=True)
    context = adapter.client._ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_bridge_process_refuses_to_start_without_tls_to_a_remote_broker(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMAL_")}
    env.update(
        PYTHONPATH=str(ROOT),
        THERMAL_MQTT_HOST="eu1.cloud.thethings.network",
        THERMAL_MQTT_TLS="false",
        THERMAL_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    done = subprocess.run(
        [sys.executable, "-m", "bridge"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "mqtt.tls is off" in done.stderr and "allow_insecure" in done.stderr
