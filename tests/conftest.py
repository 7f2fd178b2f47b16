"""Fixtures shared by the whole suite: real MariaDB, Mosquitto and Redis for the session, each on
a free loopback port with its own temp directory (see tests/services.py), and per-test databases.

A service that cannot start fails the test in CI (CI=true/1 or THERMAL_REQUIRE_SERVICES=1) and
skips it elsewhere. A test that stops or kills a session service should use
`tests.services.service_down`; whatever it does, the service runs again after the test.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from tests.services import (
    MariaDBServer,
    MosquittoServer,
    RedisServer,
    Service,
    ServiceUnavailable,
)

# Tests that request any of these talk to a real service: they are marked `integration`.
SERVICE_FIXTURES = frozenset(
    {"mariadb_server", "mosquitto_server", "mqtt_broker", "redis_server", "mysql_url"}
)

S = TypeVar("S", bound=Service)

_session_services: list[Service] = []
_boot_report: list[str] = []
_database_numbers = itertools.count(1)


def services_required() -> bool:
    """Whether a missing service is a failure (CI) rather than a skip (a developer's machine)."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or os.environ.get("THERMAL_REQUIRE_SERVICES", "").strip() == "1"


def _unavailable(exc: ServiceUnavailable) -> NoReturn:
    if services_required():
        pytest.fail(f"{exc}", pytrace=False)
    pytest.skip(f"{exc}")


def _session_service(factory: type[S]) -> Iterator[S]:
    service: S | None = None
    problem: ServiceUnavailable | None = None
    try:
        service = factory()
        service.start()
    except ServiceUnavailable as exc:
        problem = exc
    if problem is not None or service is None:
        if service is not None:
            service.close()
        _unavailable(problem or ServiceUnavailable(f"{factory.__name__} did not start"))
    _session_services.append(service)
    try:
        yield service
    finally:
        _session_services.remove(service)
        boots = ", ".join(f"{t:.2f}" for t in service.boot_times_s)
        prepare = f"set-up {service.prepare_s:.2f} s, " if service.prepare_s >= 0.01 else ""
        _boot_report.append(f"{service.name} on port {service.port}: {prepare}boots {boots} s")
        service.close()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A MariaDB for the session; root without password over TCP, database `thermal_test`."""
    yield from _session_service(MariaDBServer)


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    """A Mosquitto for the session, persistent (queued QoS 1 messages survive a restart)."""
    yield from _session_service(MosquittoServer)


@pytest.fixture(scope="session")
def mqtt_broker(mosquitto_server: MosquittoServer) -> MosquittoServer:
    """The session's Mosquitto under the name the bridge tests use."""
    return mosquitto_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis for the session (no persistence); `.url` is redis://127.0.0.1:<port>/0."""
    yield from _session_service(RedisServer)


@pytest.fixture
def mysql_url(mariadb_server: MariaDBServer) -> str:
    """A new empty database on the session's MariaDB, for this test alone."""
    name = f"t{next(_database_numbers)}_{uuid.uuid4().hex[:8]}"
    try:
        return mariadb_server.fresh_database(name)
    except Exception as exc:  # the server died under an earlier test and could not come back
        problem = ServiceUnavailable(f"cannot create database {name}: {exc}")
    _unavailable(problem)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in the test's temp directory."""
    return f"sqlite:///{tmp_path / 'thermal.sqlite3'}"


@pytest.fixture(autouse=True)
def _session_services_left_running() -> Iterator[None]:
    """After each test, start again any session service the test stopped or crashed."""
    yield
    for service in list(_session_services):
        service.ensure_running()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _boot_report:
        terminalreporter.write_sep("-", "test services")
        for line in _boot_report:
            terminalreporter.write_line(line)
