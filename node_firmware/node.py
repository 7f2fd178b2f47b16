"""The node's program logic: capture, fragment, send, obey settings, run the fan.

Pure logic over the interfaces of `hardware.py`: no clock, no threads, no I/O of its own. Each
`step()` is one uplink; whoever calls it (the Pi's main loop, the simulator) decides when.
Rules cite PROTOCOL.md "Node behaviour".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from node_firmware import protocol
from node_firmware.hardware import (
    AmbientSensor,
    CameraGrid,
    Downlink,
    Fan,
    Radio,
    SettingsStore,
    ThermalCamera,
)
from node_firmware.protocol import (
    FRAGMENT_PORT,
    FRAME_NUMBER_MODULUS,
    PROTOCOL_VERSION,
    SETTINGS_PORT,
    STATUS_PORT,
    Fragment,
    IncompressibleFrameError,
    Mode,
    NodeStatus,
    ProtocolError,
    Settings,
)

log = logging.getLogger(__name__)

# The webapp's default too (webapp/settings.py): fan off, slow mode, 50 °C.
DEFAULT_SETTINGS = Settings(fan=False, mode=Mode.SLOW, threshold=50)


@dataclass(frozen=True, slots=True)
class SentUplink:
    """What one `step()` sent, and the downlink that came back in its RX windows."""

    port: int
    payload: bytes
    downlink: Downlink | None


def as_sent(value: float | None) -> float | None:
    """A camera value as the protocol carries it: °C/10, clamped; None/NaN -> None."""
    return protocol.raw_to_celsius(protocol.celsius_to_raw(value))


def hottest_pixel(grid: CameraGrid) -> float | None:
    """The highest pixel of a frame as it is sent (None when no pixel has a reading)."""
    values = [v for row in grid for v in (as_sent(p) for p in row) if v is not None]
    return max(values) if values else None


class Node:
    """One thermal node: `step()` sends the next uplink; downlinks are applied as they come."""

    def __init__(
        self,
        camera: ThermalCamera,
        ambient: AmbientSensor,
        fan: Fan,
        radio: Radio,
        store: SettingsStore,
        *,
        default_settings: Settings = DEFAULT_SETTINGS,
        first_frame_number: int = 0,
    ) -> None:
        self.camera = camera
        self.ambient = ambient
        self.fan = fan
        self.radio = radio
        self.store = store
        # Boot: the saved settings survive a reboot; the defaults apply on the first boot.
        self.settings: Settings = store.load() or default_settings
        self.next_frame_number = first_frame_number % FRAME_NUMBER_MODULUS
        self.frame_number: int | None = None  # the frame in progress (or the last one)
        self.last_frame: CameraGrid | None = None  # the last frame the camera delivered
        self.hottest_c: float | None = None  # its hottest pixel, as sent
        self.pending: list[Fragment] = []  # fragments of the frame in progress not yet sent
        # PROTOCOL.md FPort 2: "Sent once after the node joins (boot)".
        self.status_due = True
        self.applied_settings = 0
        self._update_fan()

    # --- the fan rule ---------------------------------------------------------------------

    def fan_wanted(self) -> bool:
        """PROTOCOL.md: the user asked for the fan, or the last frame's hottest pixel is above
        the threshold (automatic cooling)."""
        if self.settings.fan:
            return True
        return self.hottest_c is not None and self.hottest_c > self.settings.threshold

    def _update_fan(self) -> None:
        wanted = self.fan_wanted()
        if wanted != self.fan.running:
            log.info("fan %s", "on" if wanted else "off")
            self.fan.set(wanted)

    # --- uplinks --------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """The FPort 2 status as of now."""
        return NodeStatus(
            version=PROTOCOL_VERSION,
            fan_requested=self.settings.fan,
            fan_running=self.fan.running,
            mode=self.settings.mode,
            threshold=self.settings.threshold,
            ambient=self._read_ambient(),
            step=self.settings.step,
        )

    def step(self) -> SentUplink:
        """Send one uplink: a status when one is due, else the next fragment."""
        if self.status_due:
            self._update_fan()
            port, payload = STATUS_PORT, protocol.encode_status(self.status())
            self.status_due = False
        else:
            if not self.pending:
                self._capture()
            self._update_fan()
            # PROTOCOL.md: "The fan bit of every fragment reports the fan's real state", and the
            # ambient byte the latest reading: both are filled in when the fragment is sent.
            fragment = replace(
                self.pending.pop(0), fan=self.fan.running, ambient=self._read_ambient()
            )
            port, payload = FRAGMENT_PORT, protocol.encode_fragment(fragment)
        downlink = self.radio.send(port, payload)
        if downlink is not None:
            self.receive(downlink)
        return SentUplink(port=port, payload=payload, downlink=downlink)

    def _capture(self) -> None:
        """Read a whole frame and split it into the fragments of the configured mode."""
        grid = self.camera.read()
        protocol.check_grid(grid, protocol.ROWS, protocol.COLS)
        self.last_frame = grid
        self.hottest_c = hottest_pixel(grid)
        self.frame_number = self.next_frame_number
        # PROTOCOL.md byte 0: "+1 (mod 64) for every new frame the node starts".
        self.next_frame_number = (self.next_frame_number + 1) % FRAME_NUMBER_MODULUS
        mode = Mode(self.settings.mode)
        try:
            self.pending = protocol.fragment_frame(
                grid,
                mode,
                self.frame_number,
                fan=self.fan.running,
                ambient=None,
                step=self.settings.step,
            )
        except IncompressibleFrameError as exc:
            # docs/protocol.md: a frame compressed mode cannot beat goes slow, this frame only.
            log.info("frame %d sent in slow mode: %s", self.frame_number, exc)
            self.pending = protocol.fragment_frame(
                grid, Mode.SLOW, self.frame_number, fan=self.fan.running, ambient=None
            )

    def _read_ambient(self) -> int | None:
        value = self.ambient.read()
        return protocol.byte_to_ambient(protocol.ambient_to_byte(value))

    # --- downlinks ------------------------------------------------------------------------

    def receive(self, downlink: Downlink) -> None:
        """Apply an FPort 10 settings downlink; anything else is logged and ignored."""
        if downlink.port != SETTINGS_PORT:
            log.warning(
                "ignored a downlink on FPort %d (settings use FPort %d): %s",
                downlink.port,
                SETTINGS_PORT,
                downlink.payload[:16].hex(),
            )
            return
        try:
            settings = protocol.decode_settings(downlink.payload)
        except ProtocolError as exc:
            log.warning("ignored a settings downlink %s: %s", downlink.payload[:16].hex(), exc)
            return
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Take new settings: persist them, run the fan by them, answer with a status uplink."""
        if settings.mode != self.settings.mode and self.pending:
            # PROTOCOL.md: "A settings downlink that changes the mode abandons the frame in
            # progress: the next fragment starts a new frame number in the new mode."
            log.info(
                "mode %s -> %s: abandoning frame %s (%d fragments unsent)",
                Mode(self.settings.mode).label,
                Mode(settings.mode).label,
                self.frame_number,
                len(self.pending),
            )
            self.pending = []
        self.settings = settings
        self.applied_settings += 1
        try:
            self.store.save(settings)
        except OSError as exc:
            log.error("could not save the settings (they apply until the next reboot): %s", exc)
        self._update_fan()
        # PROTOCOL.md: "After applying a settings downlink the node sends a status uplink
        # (FPort 2) before its next fragment".
        self.status_due = True
