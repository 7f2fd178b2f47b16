"""The node's hardware behind small interfaces: camera, ambient sensor, fan, LoRaWAN radio, flash.

`node.Node` sees only these Protocols. The Raspberry Pi drivers are in `pi.py` (imported only on
the Pi), the host's simulated ones in `simulated.py`. `JsonSettingsStore` is the one concrete
implementation here: the settings file is the same on the Pi and on the host.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from node_firmware.protocol import (
    LOSSLESS_STEP_C,
    Mode,
    ProtocolError,
    Settings,
    check_threshold,
)

log = logging.getLogger(__name__)

# A camera frame: ROWS x COLS (24 x 32) of °C, None for a pixel with no reading.
CameraGrid = Sequence[Sequence[float | None]]


@dataclass(frozen=True, slots=True)
class Downlink:
    """An application downlink the radio received in the RX windows of an uplink."""

    port: int
    payload: bytes


@runtime_checkable
class ThermalCamera(Protocol):
    """An MLX90640-like camera: one whole 24 x 32 frame per read."""

    def read(self) -> CameraGrid:
        """A 24 x 32 grid of °C; None for a pixel without a reading."""
        ...


@runtime_checkable
class AmbientSensor(Protocol):
    """The room's air temperature."""

    def read(self) -> float | None:
        """°C, or None when the sensor gave no reading this time."""
        ...


@runtime_checkable
class Fan(Protocol):
    """The cooling fan's relay."""

    @property
    def running(self) -> bool:
        """True while the fan runs."""
        ...

    def set(self, on: bool) -> None:
        """Switch the fan on or off."""
        ...


@runtime_checkable
class Radio(Protocol):
    """A LoRaWAN Class A radio (already joined)."""

    def send(self, port: int, payload: bytes) -> Downlink | None:
        """Send one uplink; return the downlink received in its RX windows, if any."""
        ...


@runtime_checkable
class SettingsStore(Protocol):
    """Where the node keeps its settings across reboots."""

    def load(self) -> Settings | None:
        """The saved settings, or None when there are none (first boot) or they are unusable."""
        ...

    def save(self, settings: Settings) -> None:
        """Persist the settings (raise OSError if that fails)."""
        ...


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """Settings as the API and the settings file spell them: fan "on"/"off", mode, threshold."""
    data: dict[str, Any] = {
        "fan": "on" if settings.fan else "off",
        "mode": Mode(settings.mode).label,
        "threshold": settings.threshold,
    }
    if settings.mode is Mode.COMPRESSED:
        data["step"] = settings.step
    return data


def settings_from_json(data: Any) -> Settings:
    """Parse `settings_to_json`'s shape; raise ProtocolError naming the bad field."""
    if not isinstance(data, dict):
        raise ProtocolError("settings must be a JSON object with fan, mode and threshold")
    fan = data.get("fan")
    if fan not in ("on", "off", True, False):
        raise ProtocolError(f"fan must be 'on' or 'off', not {fan!r}")
    mode = data.get("mode")
    if not isinstance(mode, str):
        raise ProtocolError(f"mode must be 'slow', 'fast' or 'compressed', not {mode!r}")
    threshold = data.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ProtocolError(f"threshold must be a whole number of °C, not {threshold!r}")
    step = data.get("step", LOSSLESS_STEP_C)
    if isinstance(step, bool) or not isinstance(step, int | float):
        raise ProtocolError(f"step must be 0.1, 0.2, 0.5 or 1.0 °C, not {step!r}")
    return Settings(
        fan=fan in ("on", True),
        mode=Mode.from_label(mode),
        threshold=check_threshold(threshold),
        step=float(step),
    )


class JsonSettingsStore:
    """Settings in a small JSON file, replaced atomically so a power cut never leaves half."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> Settings | None:
        """The saved settings; None (and a warning) when the file is missing or unusable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the settings file %s: %s; using defaults", self.path, exc)
            return None
        try:
            return settings_from_json(json.loads(text))
        except (ValueError, ProtocolError) as exc:
            log.warning("the settings file %s is unusable (%s); using defaults", self.path, exc)
            return None

    def save(self, settings: Settings) -> None:
        """Write to a temporary file beside the target, fsync, then rename over it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(settings_to_json(settings), f)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
