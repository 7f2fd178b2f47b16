"""The dashboard pages without a browser: served under the CSP with no inline script or style,
their static and vendored files served, and the page of a not-yet-seen node still rendered.

Decision: a node page never touches the database. For a device that has not uplinked (or a
typo) it is a 200 saying "no data yet" that fills in live when the device appears; the page's
own REST call (`GET /api/devices/<id>`, 404) tells the script it is unknown so far.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.fixtures import Feeder, make_app, make_config

STATIC = Path(__file__).resolve().parents[2] / "webapp" / "static"


@pytest.fixture
def app(tmp_path: Any) -> Iterator[Flask]:
    yield from make_app(make_config(f"sqlite:///{tmp_path}/dashboard.sqlite3"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Page(HTMLParser):
    """What a CSP without 'unsafe-inline' would refuse, and what the page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.style_attributes: list[str] = []
        self.style_elements = 0
        self.event_handlers: list[str] = []
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.testids: set[str] = set()
        self.body: dict[str, str | None] = {}
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name == "style":
                self.style_attributes.append(f"<{tag} style={value!r}>")
            if name.startswith("on"):
                self.event_handlers.append(f"<{tag} {name}=...>")
            if name == "id" and value:
                self.ids.add(value)
            if name == "data-testid" and value:
                self.testids.add(value)
        if tag == "script":
            self._in_script_without_src = "src" not in values
            if "src" in values:
                self.urls.append(values["src"] or "")
        if tag == "link" and values.get("href"):
            self.urls.append(values["href"] or "")
        if tag == "style":
            self.style_elements += 1
        if tag == "body":
            self.body = values

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts.append(data.strip()[:80])


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def assert_csp_clean(response: Any) -> Page:
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    page = parse(response.get_data(as_text=True))
    assert page.inline_scripts == []
    assert page.style_attributes == []
    assert page.style_elements == 0
    assert page.event_handlers == []
    assert page.urls and all(u.startswith("/static/") for u in page.urls)
    return page


def test_fleet_page_is_served_under_the_csp_with_no_inline_code(client: FlaskClient) -> None:
    page = assert_csp_clean(client.get("/"))
    assert {"cards", "sort-select", "fleet-empty"} <= page.testids
    assert page.body["data-page"] == "fleet"
    assert "/static/vendor/socket.io.min.js" in page.urls


def test_node_page_of_a_known_device(client: FlaskClient, app: Flask) -> None:
    Feeder(app).frame("node1", hot=33.3, number=1)
    page = assert_csp_clean(client.get("/devices/node1"))
    assert page.body["data-device-id"] == "node1"
    wanted = {
        "heatmap",
        "frame-time",
        "temp-max",
        "temp-min",
        "temp-mean",
        "ambient",
        "fan",
        "mode",
        "coverage",
        "histogram",
        "settings-form",
        "fan-select",
        "mode-select",
        "threshold-input",
        "submit-settings",
        "settings-error",
        "downlink-status",
        "history",
        "chart-max",
        "chart-ambient",
        "csv-frames",
        "csv-frame",
    }
    assert wanted <= page.testids
    assert "/static/vendor/uPlot.iife.min.js" in page.urls
    html = client.get("/devices/node1").get_data(as_text=True)
    assert 'href="/api/devices/node1/frames.csv"' in html


def test_node_page_of_an_unknown_device_says_no_data_yet(client: FlaskClient) -> None:
    response = client.get("/devices/never-seen")
    page = assert_csp_clean(response)
    assert page.body["data-device-id"] == "never-seen"
    assert "No data yet" in response.get_data(as_text=True)


def test_device_id_in_the_page_is_escaped(client: FlaskClient) -> None:
    html = client.get("/devices/%3Cscript%3Ealert(1)").get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html


def test_overlong_device_id_is_not_found(client: FlaskClient) -> None:
    assert client.get("/devices/" + "x" * 65).status_code == 404


def test_the_page_says_whether_tokens_are_required(client: FlaskClient, tmp_path: Any) -> None:
    assert parse(client.get("/").get_data(as_text=True)).body["data-tokens-required"] == "false"
    config = make_config(f"sqlite:///{tmp_path}/tokens.sqlite3", api_tokens=("sekrit",))
    for app in make_app(config):
        body = parse(app.test_client().get("/devices/node1").get_data(as_text=True)).body
        assert body["data-tokens-required"] == "true"
        assert body["data-reads-open"] == "true"  # reads are open by default


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [
        ("/static/css/app.css", "text/css"),
        ("/static/js/common.js", "text/javascript"),
        ("/static/js/fleet.js", "text/javascript"),
        ("/static/js/node.js", "text/javascript"),
        ("/static/vendor/socket.io.min.js", "text/javascript"),
        ("/static/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/static/vendor/uPlot.min.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_static_and_vendored_files_are_served(
    client: FlaskClient, path: str, mimetype: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype in (mimetype, "application/javascript")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    response.close()


def test_vendored_versions_and_licenses_are_recorded() -> None:
    versions = (STATIC / "vendor" / "VERSIONS.txt").read_text()
    assert re.search(r"^socket\.io-client 4\.\d+\.\d+ ", versions, re.M)
    assert re.search(r"^uplot 1\.\d+\.\d+ ", versions, re.M)
    for license_file in ("socket.io-client.LICENSE", "uplot.LICENSE"):
        assert "Permission is hereby granted" in (STATIC / "vendor" / license_file).read_text()


@pytest.mark.parametrize(("script", "path"), [("fleet.js", "/"), ("node.js", "/devices/node1")])
def test_every_element_a_script_looks_up_is_on_its_page(
    client: FlaskClient, script: str, path: str
) -> None:
    page = parse(client.get(path).get_data(as_text=True))
    wanted = set()
    for name in (script, "common.js"):
        source = (STATIC / "js" / name).read_text()
        wanted |= set(re.findall(r'T\.\$\("([\w-]+)"\)', source))
        wanted |= set(re.findall(r'\$\("([\w-]+)"\)', source))
    assert wanted, "no element lookups found: the pattern is out of date"
    assert wanted - page.ids == set()
