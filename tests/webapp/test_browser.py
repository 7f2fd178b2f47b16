"""The dashboard in real Chromium (Debian's, driven by Playwright's Python API).

The app is served for real (werkzeug's threaded server, Socket.IO in threading mode, websocket
through simple-websocket) on a loopback port; uplinks and TTN downlink events go through the real
bridge logic (`Feeder`). Every wait is one of Playwright's auto-waiting `expect` assertions.
Screenshots go to var/test-artifacts/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ttn_messages import at_seconds, downlink_event
from tests.webapp.fixtures import Feeder, LiveServer, make_config
from webapp import create_app

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
EXPECT_TIMEOUT_MS = 20_000
PHONE = {"width": 360, "height": 780}
BLOB_URL = re.compile(r"^blob:")  # the PNG of a `frame` event shown through a Blob URL


def _missing(what: str) -> None:
    """Absent Chromium or Playwright: a failure in CI (scripts/ensure-services.sh installs
    them), a skip on a developer's machine."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing; scripts/ensure-services.sh installs it")
    pytest.skip(f"{what} is missing (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _missing(str(CHROMIUM))
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the playwright Python package")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def serve(tmp_path: Path, **config: Any) -> Iterator[tuple[LiveServer, Feeder]]:
    app = create_app(
        make_config(f"sqlite:///{tmp_path}/browser.sqlite3", **config), start_bridge=False
    )
    server = LiveServer(app)
    try:
        yield server, Feeder(app)
    finally:
        server.stop()
        app.extensions["thermal"].stop()
        app.extensions["thermal"].store.engine.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, Feeder]]:
    yield from serve(tmp_path)


@pytest.fixture
def live_with_tokens(tmp_path: Path) -> Iterator[tuple[LiveServer, Feeder]]:
    # Reads closed too: then every REST read, image and download needs the token as well.
    yield from serve(tmp_path, api_tokens=("sekrit",), reads_open=False)


# A socket closed while its websocket upgrade is under way (the page is left, or a refused
# connection is dropped): Chromium warns, and werkzeug's development server may answer the
# aborted upgrade with an HTTP 500 written on the upgraded socket ("Invalid frame header").
TORN_DOWN_DURING_UPGRADE = (
    "WebSocket is closed before the connection is established",
    "Invalid frame header",
)


class Console:
    """The page's errors: a CSP violation, a script error or an unexpected failed request."""

    def __init__(self, page: Any, allowed: tuple[str, ...] = ()) -> None:
        self.problems: list[str] = []
        self.allowed = (*allowed, *TORN_DOWN_DURING_UPGRADE)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning") and not any(
            a in message.text for a in self.allowed
        ):
            self.problems.append(f"console {message.type}: {message.text}")

    def forget_websocket_noise(self) -> None:
        """Drop what the browser logged about websockets so far (a refused connection torn down
        in the middle of its upgrade can fail in several ways, none of them the page's)."""
        self.problems = [p for p in self.problems if "WebSocket" not in p]

    def assert_clean(self) -> None:
        assert self.problems == []


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, color_scheme="dark"
    )
    yield context.new_page()
    context.close()


def screenshot(page: Any, name: str) -> None:
    """Check nothing is wider than the phone's screen (no sideways scrolling at 360 px), then
    save the whole page from its top."""
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide"
    page.evaluate("() => window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def newest_frame_id(server: LiveServer, device_id: str) -> int:
    frames = server.get(f"/api/devices/{device_id}/frames?limit=1")["frames"]
    return int(frames[0]["frame_id"])


def test_fleet_and_node_pages_follow_frames_and_a_settings_change_live(
    live: tuple[LiveServer, Feeder], phone: Any
) -> None:
    from playwright.sync_api import expect

    server, feeder = live
    page = phone
    # The settings error below is a 400 answer, which Chromium logs.
    console = Console(page, allowed=("status of 400",))
    feeder.status("node1")
    feeder.frame("node1", hot=33.3, number=1)
    first_id = newest_frame_id(server, "node1")

    # Fleet: the card with its thumbnail from the snapshot.
    page.goto(server.url + "/")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    card = page.get_by_test_id("device-card-node1")
    expect(card).to_be_visible()
    expect(card.get_by_test_id("temp-max")).to_have_text("33.3 °C")
    expect(card.get_by_test_id("online-badge")).to_have_text("online")
    expect(card.get_by_test_id("fan")).to_have_text("off")
    expect(card.get_by_test_id("mode")).to_have_text("slow")
    thumb = card.get_by_test_id("thumb")
    expect(thumb).to_have_attribute("data-frame-id", str(first_id))
    expect(thumb).to_have_attribute("src", BLOB_URL)
    old_time = card.get_by_test_id("frame-time").get_attribute("datetime")

    # A new frame arrives live.
    feeder.frame("node1", hot=36.6, number=2)
    second_id = newest_frame_id(server, "node1")
    assert second_id != first_id
    expect(thumb).to_have_attribute("data-frame-id", str(second_id))
    expect(card.get_by_test_id("temp-max")).to_have_text("36.6 °C")
    expect(card.get_by_test_id("frame-time")).not_to_have_attribute("datetime", old_time or "")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )

    # A new device appears live, hottest first; alarms in words.
    feeder.frame("node2", hot=58.0, number=1)
    card2 = page.get_by_test_id("device-card-node2")
    expect(card2).to_be_visible()
    expect(card2.get_by_test_id("alarms")).to_contain_text("over the 50.0 °C threshold")
    cards = page.locator("#cards > li")
    expect(cards.first).to_have_attribute("data-device-id", "node2")
    page.get_by_test_id("sort-select").select_option("name")
    expect(cards.first).to_have_attribute("data-device-id", "node1")
    expect(page.get_by_test_id("fleet-summary")).to_contain_text("2 nodes")
    screenshot(page, "dashboard.png")

    # Node page: live heatmap, statistics, histogram, history, charts.
    card.click()
    expect(page).to_have_url(server.url + "/devices/node1")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    heatmap = page.get_by_test_id("heatmap")
    expect(heatmap).to_have_attribute("data-frame-id", str(second_id))
    expect(page.get_by_test_id("temp-max")).to_have_text("36.6 °C")
    expect(page.get_by_test_id("coverage")).to_have_text("complete")
    expect(page.get_by_test_id("ambient")).to_have_text("23.0 °C")
    expect(page.get_by_test_id("histogram")).to_have_attribute("data-frame-id", str(second_id))
    expect(page.get_by_test_id("history").locator("li")).to_have_count(2)
    expect(page.get_by_test_id("chart-max")).to_have_attribute("data-points", "2")
    expect(page.get_by_test_id("csv-frame")).to_have_attribute(
        "href", f"/api/frames/{second_id}.csv"
    )
    feeder.frame("node1", hot=39.9, number=3)
    third_id = newest_frame_id(server, "node1")
    expect(heatmap).to_have_attribute("data-frame-id", str(third_id))
    expect(page.get_by_test_id("temp-max")).to_have_text("39.9 °C")
    expect(page.get_by_test_id("history").locator("li")).to_have_count(3)
    expect(page.get_by_test_id("chart-max")).to_have_attribute("data-points", "3")
    expect(page.get_by_test_id("histogram")).to_have_attribute("data-frame-id", str(third_id))

    # An older frame from the history strip, then back to live.
    page.get_by_test_id(f"history-frame-{first_id}").click()
    expect(heatmap).to_have_attribute("data-frame-id", str(first_id))
    expect(page.get_by_test_id("temp-max")).to_have_text("33.3 °C")
    expect(page.get_by_test_id("histogram")).to_have_attribute("data-frame-id", str(first_id))
    page.get_by_test_id("back-to-live").click()
    expect(heatmap).to_have_attribute("data-frame-id", str(third_id))
    expect(page.get_by_test_id("back-to-live")).to_be_hidden()

    # A bad threshold: the API's error in words next to the form.
    page.get_by_test_id("threshold-input").fill("500")
    page.get_by_test_id("submit-settings").click()
    expect(page.get_by_test_id("settings-error")).to_contain_text(
        "threshold must be from -40 to 150"
    )

    # Fan on: queued, then TTN's events and the node's status move it along.
    page.get_by_test_id("threshold-input").fill("50")
    page.get_by_test_id("fan-select").select_option("on")
    page.get_by_test_id("submit-settings").click()
    status = page.get_by_test_id("downlink-status")
    expect(status).to_have_text("queued")
    expect(page.get_by_test_id("settings-error")).to_be_hidden()
    downlink = server.get("/api/devices/node1/downlinks")["downlinks"][0]
    assert downlink["settings"]["fan"] == "on"
    expect(status).to_have_attribute("data-downlink-id", str(downlink["downlink_id"]))
    correlation = [downlink["correlation_id"]]
    feeder.bridge.handle_message(downlink_event("node1", "queued", correlation, at_seconds(500)))
    feeder.bridge.handle_message(downlink_event("node1", "sent", correlation, at_seconds(501)))
    expect(status).to_have_text("sent")
    feeder.bridge.handle_message(downlink_event("node1", "ack", correlation, at_seconds(502)))
    expect(status).to_have_text("acked")
    expect(page.get_by_test_id("downlink-message")).to_contain_text("acknowledged")
    feeder.status("node1", fan=True)
    expect(status).to_have_text("applied")
    expect(page.get_by_test_id("fan")).to_have_text("on")
    expect(page.locator('#downlink-steps li[data-step="applied"]')).to_have_attribute(
        "data-state", "current"
    )
    screenshot(page, "node.png")
    console.assert_clean()


def test_node_page_of_a_device_not_seen_yet_fills_in_when_it_appears(
    live: tuple[LiveServer, Feeder], phone: Any
) -> None:
    from playwright.sync_api import expect

    server, feeder = live
    page = phone
    # The page's GET /api/devices/node9 is a 404 until the device first uplinks.
    console = Console(page, allowed=("status of 404",))
    page.goto(server.url + "/devices/node9")
    expect(page.get_by_test_id("no-data")).to_be_visible()
    expect(page.get_by_test_id("no-data")).to_contain_text("No data yet")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    feeder.frame("node9", hot=31.2, number=1)
    expect(page.get_by_test_id("heatmap")).to_be_visible()
    expect(page.get_by_test_id("no-data")).to_be_hidden()
    expect(page.get_by_test_id("temp-max")).to_have_text("31.2 °C")
    expect(page.get_by_test_id("online-badge")).to_have_text("online")
    console.assert_clean()


def test_token_is_asked_once_and_used_for_the_socket_and_the_api(
    live_with_tokens: tuple[LiveServer, Feeder], phone: Any
) -> None:
    from playwright.sync_api import expect

    server, feeder = live_with_tokens
    page = phone
    # The wrong token below is answered 401 by the API, and the refused socket's engine.io
    # session is closed by the server, so its outstanding long-poll may be answered 400:
    # Chromium logs both.
    console = Console(page, allowed=("status of 401", "status of 400"))
    feeder.status("node1")
    feeder.frame("node1", hot=35.0, number=1)
    page.goto(server.url + "/")
    form = page.get_by_test_id("token-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("forget-token")).to_be_hidden()
    # A wrong token: refused, forgotten and asked for again.
    page.get_by_test_id("token-input").fill("wrong")
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("token-reason")).to_contain_text("refused")
    expect(form).to_be_visible()
    page.get_by_test_id("token-input").fill("sekrit")
    page.get_by_test_id("token-submit").click()
    expect(form).to_be_hidden()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("device-card-node1").get_by_test_id("temp-max")).to_have_text(
        "35.0 °C"
    )
    expect(page.get_by_test_id("forget-token")).to_be_visible()
    console.forget_websocket_noise()
    # Kept in localStorage: the node page does not ask again; reads, thumbnails and a write
    # carry the token.
    page.goto(server.url + "/devices/node1")
    expect(page.get_by_test_id("temp-max")).to_have_text("35.0 °C")
    expect(form).to_be_hidden()
    expect(page.get_by_test_id("history").locator("img").first).to_have_attribute("src", BLOB_URL)
    expect(page.get_by_test_id("histogram")).to_have_attribute("data-bins", "20")
    page.get_by_test_id("mode-select").select_option("fast")
    page.get_by_test_id("submit-settings").click()
    expect(page.get_by_test_id("downlink-status")).to_have_text("queued")
    downlinks = server.get("/api/devices/node1/downlinks", token="sekrit")["downlinks"]
    assert downlinks[0]["settings"]["mode"] == "fast"
    # Compressed mode: the step chosen in the page goes into the downlink.
    page.get_by_test_id("mode-select").select_option("compressed")
    page.get_by_test_id("step-select").select_option("0.5")
    page.get_by_test_id("submit-settings").click()
    status = page.get_by_test_id("downlink-status")
    expect(status).not_to_have_attribute("data-downlink-id", str(downlinks[0]["downlink_id"]))
    newest = server.get("/api/devices/node1/downlinks", token="sekrit")["downlinks"][0]
    assert newest["settings"]["mode"] == "compressed" and newest["settings"]["step"] == 0.5
    expect(status).to_have_attribute("data-downlink-id", str(newest["downlink_id"]))
    console.assert_clean()
