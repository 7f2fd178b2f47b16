"""Settings request validation and merging (webapp/settings.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_firmware.protocol import Mode, Settings, decode_settings, encode_settings
from webapp.settings import (
    SettingsChange,
    SettingsError,
    merge_settings,
    parse_settings_request,
    settings_to_json,
)


def test_any_subset_is_accepted() -> None:
    assert parse_settings_request({"fan": "on"}) == SettingsChange(fan=True)
    assert parse_settings_request({"mode": "fast", "threshold": 45}) == SettingsChange(
        mode=Mode.FAST, threshold=45
    )
    assert parse_settings_request({"threshold": 50.0}).threshold == 50


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "nothing to change"),
        ([], "JSON object"),
        ({"fan": "yes"}, "fan must be 'on' or 'off'"),
        ({"fan": True}, "fan must be 'on' or 'off'"),
        ({"mode": "turbo"}, "mode must be 'slow', 'fast' or 'compressed'"),
        ({"threshold": 151}, "threshold must be from -40 to 150"),
        ({"threshold": -41}, "threshold must be from -40 to 150"),
        ({"threshold": "50"}, "threshold must be an integer"),
        ({"threshold": True}, "threshold must be an integer"),
        ({"threshold": 50.5}, "whole number"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_bad_requests_name_the_field(body: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings_request(body)


def test_merge_keeps_what_the_request_does_not_mention() -> None:
    current = Settings(fan=False, mode=Mode.SLOW, threshold=50)
    assert merge_settings(current, SettingsChange(fan=True)) == Settings(True, Mode.SLOW, 50)
    assert merge_settings(current, SettingsChange()) == current


@given(st.booleans(), st.sampled_from(["slow", "fast"]), st.integers(-40, 150))
def test_valid_requests_encode_and_decode_to_the_same_settings(
    fan: bool, mode: str, threshold: int
) -> None:
    body = {"fan": "on" if fan else "off", "mode": mode, "threshold": threshold}
    merged = merge_settings(Settings(False, Mode.SLOW, 0), parse_settings_request(body))
    assert decode_settings(encode_settings(merged)) == merged
    assert settings_to_json(merged) == body
