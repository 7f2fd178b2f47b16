"""The REST API fuzzed from its own OpenAPI document (/api/openapi.json) with schemathesis,
through WSGI: every documented operation gets generated valid and invalid requests (query
strings, path ids up to 2**90, bodies with wrong types and unknown keys, undeclared methods), and
every check holds: no 5xx, only documented status codes and content types, responses matching
their schemas, invalid input refused, 405 with an Allow header.

A bounded run here (THERMAL_API_FUZZ_EXAMPLES per operation, default 25); the larger run of
README.md's "Delivery guarantees" is the same test with THERMAL_API_FUZZ_EXAMPLES=1000.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from tests.webapp.fixtures import Feeder, make_app, make_config
from webapp.openapi import document

EXAMPLES = int(os.environ.get("THERMAL_API_FUZZ_EXAMPLES", "25"))


class CurrentApp:
    """The WSGI app schemathesis calls: the app of the test running now."""

    app: Flask | None = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        assert self.app is not None, "no app: request the fuzzed_app fixture"
        return self.app(environ, start_response)


CURRENT = CurrentApp()
schema = schemathesis.openapi.from_dict(document())
schema.app = CURRENT  # what schemathesis.openapi.from_wsgi sets
schema.location = "/api/openapi.json"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.integration)])
def fuzzed_app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Flask]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/fuzz.sqlite3"
    else:
        url = request.getfixturevalue("mysql_url")
    for app in make_app(make_config(url, settings_per_day=100_000)):
        served = app.test_client().get("/api/openapi.json").get_json()
        assert served == json.loads(json.dumps(document()))  # fuzzing what is served
        feeder = Feeder(app)
        feeder.status("node1")
        feeder.frame("node1", hot=41.5, number=1)
        feeder.frame("node2", hot=38.0, number=1, skip=(3,))
        CURRENT.app = app
        try:
            yield app
        finally:
            CURRENT.app = None


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_every_generated_request_without_a_server_error(
    case: Any, fuzzed_app: Flask
) -> None:
    case.call_and_validate()


# What the fuzzer found, kept as plain regression tests.


def test_a_frame_id_beyond_64_bits_is_404_not_500(fuzzed_app: Flask) -> None:
    client = fuzzed_app.test_client()
    for suffix in ("", ".png", ".csv", "/histogram"):
        response = client.get(f"/api/frames/{2**90}{suffix}")
        assert response.status_code == 404 and "unknown frame" in response.json["error"]


def test_405_names_the_allowed_methods(fuzzed_app: Flask) -> None:
    response = fuzzed_app.test_client().delete("/api/devices/node1/settings")
    assert response.status_code == 405 and response.json["error"]
    assert "POST" in response.headers["Allow"]
