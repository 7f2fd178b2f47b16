"""Alarms in real Chromium: active alarms with severity at the top of the fleet page, the alarms
page (history, filters, acknowledgement with a note, who acknowledged), and the node page's
alarm rules with the threshold and hysteresis band on its hottest-pixel chart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webapp.fixtures import Feeder
from tests.webapp.test_browser import (  # noqa: F401 (fixtures)
    Console,
    LiveServer,
    browser,
    phone,
    screenshot,
    serve,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, Feeder]]:
    yield from serve(tmp_path)


def test_alarms_are_shown_by_severity_acked_with_a_note_and_their_rules_changed(
    live: tuple[LiveServer, Feeder],
    phone: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    server, feeder = live
    page = phone
    console = Console(page, allowed=("status of 400",))  # the bad rule below
    feeder.status("node1")
    feeder.frame("node1", hot=66.0, number=1)  # over the threshold by more than 10: critical
    feeder.frame("node2", hot=52.0, number=1)  # a warning

    # Fleet: active alarms at the top, critical first.
    page.goto(server.url + "/")
    active = page.get_by_test_id("active-alarms")
    expect(active).to_be_visible()
    first = page.get_by_test_id("active-alarm-list").get_by_test_id("alarm").first
    expect(first).to_have_attribute("data-severity", "critical")
    expect(first).to_contain_text("node1")
    expect(first).to_contain_text("over the 50.0 °C threshold")
    over2 = page.locator('#active-alarm-list [data-kind="over_threshold"]', has_text="node2")
    expect(over2).to_have_attribute("data-severity", "warning")
    screenshot(page, "fleet-alarms.png")

    # A live escalation moves node2's alarm to critical.
    feeder.frame("node2", hot=64.0, number=2)
    expect(over2).to_have_attribute("data-severity", "critical")

    # The alarms page: history, a filter, and an acknowledgement with a note.
    page.get_by_test_id("to-alarms").click()
    expect(page).to_have_url(server.url + "/alarms")
    rows = page.get_by_test_id("alarm-row")
    expect(rows.first).to_be_visible()
    page.get_by_test_id("filter-severity").select_option("critical")
    page.get_by_test_id("filter-kind").select_option("over_threshold")
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(2)
    row = page.locator('[data-testid="alarm-row"]', has_text="node1")
    expect(row).to_have_attribute("data-acked", "false")
    row.get_by_test_id("ack-note").fill("fan checked, cell 4 replaced")
    row.get_by_test_id("ack-button").click()
    expect(row).to_have_attribute("data-acked", "true")
    expect(row.get_by_test_id("acked")).to_contain_text("Acknowledged by anonymous")
    expect(row.get_by_test_id("acked")).to_contain_text("fan checked, cell 4 replaced")
    [acked] = [
        a
        for a in server.get("/api/alarms?device=node1&kind=over_threshold")["alarms"]
        if a["acked_at"]
    ]
    assert acked["acked_by"] == "anonymous" and acked["note"] == "fan checked, cell 4 replaced"
    screenshot(page, "alarms.png")

    # A live clearing shows up on the page by itself.
    page.get_by_test_id("filter-severity").select_option("")
    page.get_by_test_id("filter-active").select_option("false")
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(0)
    feeder.frame("node1", hot=40.0, number=2)
    feeder.frame("node1", hot=40.0, number=3)
    expect(page.locator('[data-testid="alarm-row"][data-kind="over_threshold"]')).to_have_count(1)

    # The node page: the rules in effect, changed by the form; the threshold and band drawn.
    page.goto(server.url + "/devices/node1")
    form = page.get_by_test_id("rules-form")
    expect(form).to_have_attribute("data-loaded", "true")
    expect(page.get_by_test_id("rule-clear_after_frames")).to_have_value("2")
    expect(page.get_by_test_id("rules-summary")).to_contain_text("clear below 48.0 °C")
    chart = page.get_by_test_id("chart-max")
    expect(chart).to_have_attribute("data-threshold", "50")
    expect(chart).to_have_attribute("data-clear-below", "48")
    page.get_by_test_id("rule-hysteresis_c").fill("5")
    page.get_by_test_id("rule-clear_after_frames").fill("3")
    page.get_by_test_id("submit-rules").click()
    expect(page.get_by_test_id("rules-summary")).to_contain_text("clear below 45.0 °C")
    expect(chart).to_have_attribute("data-clear-below", "45")
    rules = server.get("/api/devices/node1/alarm-rules")
    assert rules["clear_after_frames"] == 3 and rules["hysteresis_c"] == 5.0
    assert rules["overridden"] == ["clear_after_frames", "hysteresis_c"]
    page.get_by_test_id("rule-clear_after_frames").fill("")  # back to the server's rule
    page.get_by_test_id("submit-rules").click()
    expect(page.get_by_test_id("rule-clear_after_frames")).to_have_value("2")
    assert server.get("/api/devices/node1/alarm-rules")["overridden"] == ["hysteresis_c"]
    page.get_by_test_id("rule-rise_c").fill("0")
    page.get_by_test_id("submit-rules").click()
    expect(page.get_by_test_id("rules-error")).to_contain_text("rise_c must be a number")
    screenshot(page, "node-rules.png")
    console.assert_clean()
