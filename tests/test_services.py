"""The throw-away services the integration tests run on (tests/services.py, tests/conftest.py):
each does the real thing, keeps its data over a restart, and comes back after a test stops it."""

from __future__ import annotations

import queue
import socket
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import OperationalError

from tests.services import (
    SYSTEM_PORTS,
    MariaDBServer,
    MosquittoServer,
    RedisServer,
    ServiceUnavailable,
    find_binary,
    service_down,
)

WAIT_S = 20.0
TOPIC = "v3/services-test@ttn/devices/node1/up"

readings = sa.Table(
    "readings",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("temperature", sa.Float, nullable=False),
    sa.Column("note", sa.String(100), nullable=False),
)


def write_readings(url: str, rows: list[tuple[str, float, str]]) -> None:
    engine = sa.create_engine(url)
    try:
        readings.create(engine)
        with engine.begin() as conn:
            conn.execute(
                readings.insert(),
                [{"device_id": d, "temperature": t, "note": n} for d, t, n in rows],
            )
    finally:
        engine.dispose()


def read_readings(url: str) -> list[tuple[str, float, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(readings.c.device_id, readings.c.temperature, readings.c.note)
            return [tuple(r) for r in conn.execute(query.order_by(readings.c.id))]
    finally:
        engine.dispose()


ROWS = [("node1", 24.5, "ambient °C"), ("node2", 71.25, "hot spot 🔥")]


class MqttClient:
    """A paho 2.x client whose connection, subscription and messages a test can wait for."""

    def __init__(self, broker: MosquittoServer, client_id: str, clean_session: bool = True):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), f"no CONNACK from {broker}"

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        assert not reason_code.is_failure, reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reason_codes: Any, _p: Any) -> None:
        assert all(rc.value == 1 for rc in reason_codes), reason_codes  # granted QoS 1
        self.subscribed.set()

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), "no PUBACK"

    def next_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no message within {WAIT_S} s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# MariaDB


def test_mariadb_round_trip_through_sqlalchemy_and_pymysql(mysql_url: str) -> None:
    assert mysql_url.startswith("mysql+pymysql://root@127.0.0.1:")
    assert mysql_url.endswith("?charset=utf8mb4")
    write_readings(mysql_url, ROWS)
    assert read_readings(mysql_url) == ROWS


def test_each_test_gets_a_fresh_empty_database(
    mariadb_server: MariaDBServer, mysql_url: str
) -> None:
    assert mysql_url != mariadb_server.url
    engine = sa.create_engine(mysql_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    assert mariadb_server.url.startswith(f"mysql+pymysql://root@127.0.0.1:{mariadb_server.port}/")
    assert "/thermal_test?" in mariadb_server.url


def test_fresh_database_replaces_an_old_one_of_the_same_name(
    mariadb_server: MariaDBServer,
) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    url = mariadb_server.fresh_database(name)
    write_readings(url, ROWS)
    assert mariadb_server.fresh_database(name) == url
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="must match"):
        mariadb_server.fresh_database("bad`name")


def test_mariadb_data_survives_restart_on_the_same_port(
    mariadb_server: MariaDBServer, mysql_url: str
) -> None:
    write_readings(mysql_url, ROWS)
    port = mariadb_server.port
    mariadb_server.restart()
    assert mariadb_server.port == port and mariadb_server.running
    assert read_readings(mysql_url) == ROWS


def test_mariadb_committed_rows_survive_a_crash(
    mariadb_server: MariaDBServer, mysql_url: str
) -> None:
    write_readings(mysql_url, ROWS)
    with service_down(mariadb_server, crash=True):
        assert not mariadb_server.running
        engine = sa.create_engine(mysql_url, connect_args={"connect_timeout": 2})
        try:
            with pytest.raises(OperationalError):
                engine.connect()
        finally:
            engine.dispose()
    assert read_readings(mysql_url) == ROWS


# Mosquitto


def test_mosquitto_delivers_qos1_publish_to_subscriber(mqtt_broker: MosquittoServer) -> None:
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    subscriber = MqttClient(mqtt_broker, unique("sub"))
    publisher = MqttClient(mqtt_broker, unique("pub"))
    try:
        subscriber.subscribe(TOPIC)
        publisher.publish(TOPIC, b'{"uplink_message": {}}')
        message = subscriber.next_message()
        assert (message.topic, message.payload, message.qos) == (
            TOPIC,
            b'{"uplink_message": {}}',
            1,
        )
    finally:
        publisher.close()
        subscriber.close()


def test_persistent_session_gets_what_was_published_while_offline(
    mqtt_broker: MosquittoServer,
) -> None:
    client_id = unique("persistent")
    subscriber = MqttClient(mqtt_broker, client_id, clean_session=False)
    subscriber.subscribe(TOPIC)
    subscriber.close()
    publisher = MqttClient(mqtt_broker, unique("pub"))
    try:
        publisher.publish(TOPIC, b"while offline")
    finally:
        publisher.close()
    back = MqttClient(mqtt_broker, client_id, clean_session=False)
    try:
        assert back.session_present is True
        message = back.next_message()
        assert (message.payload, message.qos) == (b"while offline", 1)
    finally:
        back.close()


def test_queued_message_survives_a_broker_restart(mqtt_broker: MosquittoServer) -> None:
    client_id = unique("survivor")
    subscriber = MqttClient(mqtt_broker, client_id, clean_session=False)
    subscriber.subscribe(TOPIC)
    subscriber.close()
    publisher = MqttClient(mqtt_broker, unique("pub"))
    try:
        publisher.publish(TOPIC, b"before restart")
    finally:
        publisher.close()
    port = mqtt_broker.port
    mqtt_broker.restart()
    assert mqtt_broker.port == port and mqtt_broker.running
    back = MqttClient(mqtt_broker, client_id, clean_session=False)
    try:
        assert back.session_present is True
        message = back.next_message()
        assert (message.payload, message.qos) == (b"before restart", 1)
    finally:
        back.close()


# Redis


def test_redis_answers_ping_set_and_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        key = unique("thermal")
        assert client.set(key, "42.5") is True
        assert client.get(key) == b"42.5"
    finally:
        client.close()


def test_service_down_brings_the_service_back_even_when_the_block_fails(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    with pytest.raises(RuntimeError), service_down(redis_server):
        assert not redis_server.running
        raise RuntimeError("the test failed while the service was down")
    assert redis_server.running and redis_server.port == port
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


# All of them


def test_services_listen_on_private_loopback_ports(
    mariadb_server: MariaDBServer, mosquitto_server: MosquittoServer, redis_server: RedisServer
) -> None:
    servers = (mariadb_server, mosquitto_server, redis_server)
    ports = {s.port for s in servers}
    assert len(ports) == 3 and not ports & SYSTEM_PORTS
    assert {s.host for s in servers} == {"127.0.0.1"}
    assert len({s.dir for s in servers}) == 3


def test_killed_session_service_is_running_again_for_the_next_test(
    redis_server: RedisServer,
) -> None:
    redis_server.kill()  # no restart here: the autouse fixture in conftest.py brings it back
    assert not redis_server.running


def test_redis_is_running_again_after_the_previous_test_killed_it(
    redis_server: RedisServer,
) -> None:
    assert redis_server.running
    assert redis.Redis.from_url(redis_server.url).ping() is True


def test_service_that_cannot_bind_its_port_says_why(redis_server: RedisServer) -> None:
    clash = RedisServer(port=redis_server.port)  # a fixed port that the session's Redis holds
    try:
        with pytest.raises(ServiceUnavailable, match="already in use"):
            clash.start()
        assert not clash.running
    finally:
        clash.close()
    assert redis_server.running


def test_first_boot_moves_to_another_port_if_its_own_was_taken(redis_server: RedisServer) -> None:
    server = RedisServer()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        server.start()
        assert server.running and server.port != taken
        assert redis.Redis.from_url(server.url).ping() is True
    finally:
        squatter.close()
        server.close()
    assert not server.dir.exists()


def test_missing_binary_is_reported_as_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match=r"thermal-no-such-server.*ensure-services"):
        find_binary("thermal-no-such-server")
