"""Validation and merging of settings requests (fan / mode / threshold / step), with no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from node_firmware.hardware import settings_to_json as settings_to_json  # the API's spelling
from node_firmware.protocol import (
    STEPS_C,
    THRESHOLD_MAX_C,
    THRESHOLD_MIN_C,
    Mode,
    ProtocolError,
    Settings,
)

# "step" (°C) is compressed mode's quantisation step (docs/protocol.md).
ALLOWED_FIELDS = ("fan", "mode", "threshold", "step")
DEFAULT_SETTINGS = Settings(fan=False, mode=Mode.SLOW, threshold=50)


class SettingsError(ProtocolError):
    """A settings request that names a bad field or value; the message says which."""


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """The fields a request wants to change; None = leave as it is."""

    fan: bool | None = None
    mode: Mode | None = None
    threshold: int | None = None
    step: float | None = None


def parse_settings_request(body: Any) -> SettingsChange:
    """Validate `{"fan": "on"|"off", "mode": "slow"|"fast", "threshold": int}`, any subset."""
    if not isinstance(body, dict):
        raise SettingsError("the body must be a JSON object with fan, mode and/or threshold")
    unknown = sorted(k for k in body if k not in ALLOWED_FIELDS)
    if unknown:
        raise SettingsError(
            f"unknown field {unknown[0]!r}; allowed fields are fan, mode, threshold and step"
        )
    if not any(k in body for k in ALLOWED_FIELDS):
        raise SettingsError("nothing to change: give at least one of fan, mode, threshold")
    fan = _parse_fan(body["fan"]) if "fan" in body else None
    mode = _parse_mode(body["mode"]) if "mode" in body else None
    threshold = _parse_threshold(body["threshold"]) if "threshold" in body else None
    step = _parse_step(body["step"]) if "step" in body else None
    return SettingsChange(fan=fan, mode=mode, threshold=threshold, step=step)


def _parse_step(value: Any) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float):
        for allowed in STEPS_C:
            if abs(value - allowed) < 1e-9:
                return allowed
    raise SettingsError(f"step must be 0.1, 0.2, 0.5 or 1.0 (°C, compressed mode), got {value!r}")


def _parse_fan(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    raise SettingsError(f"fan must be 'on' or 'off', got {value!r}")


def _parse_mode(value: Any) -> Mode:
    if isinstance(value, str) and value.lower() in ("slow", "fast", "compressed"):
        return Mode.from_label(value.lower())
    raise SettingsError(f"mode must be 'slow', 'fast' or 'compressed', got {value!r}")


def _parse_threshold(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(
            f"threshold must be an integer from {THRESHOLD_MIN_C} to {THRESHOLD_MAX_C} °C, "
            f"got {value!r}"
        )
    if isinstance(value, float) and not value.is_integer():
        raise SettingsError(f"threshold must be a whole number of °C, got {value!r}")
    threshold = int(value)
    if not THRESHOLD_MIN_C <= threshold <= THRESHOLD_MAX_C:
        raise SettingsError(
            f"threshold must be from {THRESHOLD_MIN_C} to {THRESHOLD_MAX_C} °C, got {threshold}"
        )
    return threshold


def merge_settings(current: Settings, change: SettingsChange) -> Settings:
    """The settings after applying a partial change to the current desired settings.

    A step alone switches to compressed mode (only compressed mode has a step).
    """
    mode = current.mode if change.mode is None else change.mode
    if change.step is not None and change.mode is None:
        mode = Mode.COMPRESSED
    return replace(
        current,
        fan=current.fan if change.fan is None else change.fan,
        mode=mode,
        threshold=current.threshold if change.threshold is None else change.threshold,
        step=current.step if change.step is None else change.step,
    )
