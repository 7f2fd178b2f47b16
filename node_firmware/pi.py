"""Raspberry Pi drivers for the interfaces of `hardware.py`.

Every hardware library is imported inside the class that needs it, so this module imports on
any host; the drivers themselves work only on a Pi with the packages of `requirements-pi.txt`:

- camera: Adafruit CircuitPython MLX90640 over Blinka's I2C (`board`, `busio`);
- ambient: adafruit-circuitpython-dht (DHT22 / AM2302, or DHT11);
- fan: a relay on a GPIO pin through gpiozero;
- radio: a LoRaWAN modem on the UART speaking AT commands through pyserial — RAKwireless
  RUI3 firmware (RAK3172, RAK3272S, RAK4630: `AT+SEND=port:hex`, `+EVT:RX_1:...` events), with
  the older RAK811 `at+recv=` downlink line understood too.

Each driver also accepts an already-made device object (`sensor=`, `device=`, `serial=`), which
is how the tests exercise them on the host.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from node_firmware.hardware import Downlink
from node_firmware.protocol import COLS, ROWS

log = logging.getLogger(__name__)

MLX90640_MIN_C = -40.0  # the sensor's measurement range; outside it a value is a read error
MLX90640_MAX_C = 300.0
CAMERA_RETRIES = 3

# --- camera -------------------------------------------------------------------------------


def grid_from_flat(values: list[float]) -> list[list[float | None]]:
    """The MLX90640's 768 row-major values as 24 x 32; NaN and out-of-range values -> None."""
    if len(values) != ROWS * COLS:
        raise ValueError(f"an MLX90640 frame has {ROWS * COLS} values, got {len(values)}")
    grid: list[list[float | None]] = []
    for r in range(ROWS):
        row: list[float | None] = []
        for v in values[r * COLS : (r + 1) * COLS]:
            ok = isinstance(v, (int, float)) and math.isfinite(v)
            row.append(float(v) if ok and MLX90640_MIN_C <= v <= MLX90640_MAX_C else None)
        grid.append(row)
    return grid


class MLX90640Camera:
    """`ThermalCamera`: Adafruit's MLX90640 driver on the Pi's I2C bus (SDA/SCL, 3.3 V)."""

    def __init__(
        self,
        *,
        i2c_frequency_hz: int = 800_000,
        refresh_rate_hz: int = 2,
        sensor: Any = None,
    ) -> None:
        if sensor is None:
            import adafruit_mlx90640
            import board
            import busio

            i2c = busio.I2C(board.SCL, board.SDA, frequency=i2c_frequency_hz)
            sensor = adafruit_mlx90640.MLX90640(i2c)
            sensor.refresh_rate = getattr(
                adafruit_mlx90640.RefreshRate, f"REFRESH_{refresh_rate_hz}_HZ"
            )
        self.sensor = sensor

    def read(self) -> list[list[float | None]]:
        """One frame; a frame that cannot be read after a few tries is all no-data."""
        frame = [0.0] * (ROWS * COLS)
        for attempt in range(1, CAMERA_RETRIES + 1):
            try:
                self.sensor.getFrame(frame)
                return grid_from_flat(frame)
            except (ValueError, RuntimeError, OSError) as exc:
                # The driver raises ValueError on a frame it could not read consistently.
                log.warning("MLX90640 read failed (try %d/%d): %s", attempt, CAMERA_RETRIES, exc)
        return [[None] * COLS for _ in range(ROWS)]


# --- ambient sensor -----------------------------------------------------------------------


class DhtAmbientSensor:
    """`AmbientSensor`: a DHT22 (AM2302) or DHT11 on one GPIO data pin."""

    def __init__(self, *, pin: str = "D4", model: str = "DHT22", sensor: Any = None) -> None:
        if sensor is None:
            import adafruit_dht
            import board

            models = {"DHT22": adafruit_dht.DHT22, "AM2302": adafruit_dht.DHT22}
            models["DHT11"] = adafruit_dht.DHT11
            if model.upper() not in models:
                raise ValueError(f"ambient.model must be DHT22, AM2302 or DHT11, not {model!r}")
            sensor = models[model.upper()](getattr(board, pin), use_pulseio=False)
        self.sensor = sensor

    def read(self) -> float | None:
        """°C, or None: DHT reads fail routinely (timing, checksum) and are simply retried."""
        try:
            value = self.sensor.temperature
        except (RuntimeError, OSError) as exc:
            log.debug("DHT read failed: %s", exc)
            return None
        if value is None or not math.isfinite(value):
            return None
        return float(value)


# --- fan ----------------------------------------------------------------------------------


class RelayFan:
    """`Fan`: a relay module (or MOSFET) on a GPIO pin through gpiozero."""

    def __init__(self, *, gpio: int = 17, active_high: bool = True, device: Any = None) -> None:
        if device is None:
            from gpiozero import OutputDevice

            device = OutputDevice(gpio, active_high=active_high, initial_value=False)
        self.device = device

    @property
    def running(self) -> bool:
        """True while the relay is energised."""
        return bool(self.device.value)

    def set(self, on: bool) -> None:
        """Energise or release the relay."""
        if on:
            self.device.on()
        else:
            self.device.off()


# --- LoRaWAN modem ------------------------------------------------------------------------


class ModemError(RuntimeError):
    """The modem answered with an error status, or not at all."""


# RUI3 status strings that end a command unsuccessfully.
AT_ERRORS = (
    "AT_ERROR",
    "AT_PARAM_ERROR",
    "AT_BUSY_ERROR",
    "AT_TEST_PARAM_OVERFLOW",
    "AT_NO_NETWORK_JOINED",
    "AT_RX_ERROR",
    "AT_DUTYCYCLE_RESTRICTED",
    "AT_COMMAND_NOT_FOUND",
    "AT_UNSUPPORTED_BAND",
    "ERROR",
)
TX_DONE_EVENTS = ("+EVT:TX_DONE", "+EVT:SEND_CONFIRMED_OK", "+EVT:SEND_CONFIRMED_FAILED")
JOINED_EVENT = "+EVT:JOINED"
JOIN_FAILED_PREFIX = "+EVT:JOIN_FAILED"

# RUI3 4.x: +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>  (RX_2, RX_B, RX_C likewise)
_RUI3_RX = re.compile(r"^\+EVT:RX_\w+:-?\d+:-?\d+:\w+:(\d+):([0-9A-Fa-f]*)$")
# RUI3 3.x splits it: "+EVT:RX_1, RSSI -70, SNR 8", "+EVT:UNICAST", "+EVT:<port>:<hex>"
_RUI3_OLD_DATA = re.compile(r"^\+EVT:(\d+):([0-9A-Fa-f]*)$")
# RAK811: at+recv=<port>,<rssi>,<snr>,<len>:<hex>
_RAK811_RX = re.compile(r"^at\+recv=(\d+),-?\d+,-?\d+,\d+(?::([0-9A-Fa-f]*))?$", re.IGNORECASE)


def parse_rx_event(line: str) -> Downlink | None:
    """A modem line reporting an application downlink -> Downlink; anything else -> None."""
    line = line.strip()
    for pattern in (_RUI3_RX, _RUI3_OLD_DATA, _RAK811_RX):
        match = pattern.match(line)
        if match:
            port, data = int(match.group(1)), match.group(2) or ""
            if port == 0 or not data or len(data) % 2:
                return None  # MAC commands only (FPort 0), or nothing for the application
            return Downlink(port=port, payload=bytes.fromhex(data))
    return None


class AtModemRadio:
    """`Radio`: a RUI3 LoRaWAN modem (e.g. RAK3172) on the Pi's UART, Class A, OTAA."""

    def __init__(
        self,
        *,
        port: str = "/dev/serial0",
        baudrate: int = 115200,
        serial: Any = None,
        command_timeout_s: float = 5.0,
        tx_timeout_s: float = 30.0,
        rx_grace_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if serial is None:
            import serial as pyserial

            serial = pyserial.Serial(port, baudrate, timeout=0.2)
        self.serial = serial
        self.command_timeout_s = command_timeout_s
        self.tx_timeout_s = tx_timeout_s
        self.rx_grace_s = rx_grace_s
        self.monotonic = monotonic
        self.events: list[str] = []  # unsolicited lines seen while waiting for something else

    # --- line I/O -------------------------------------------------------------------------

    def _readline(self) -> str | None:
        raw = self.serial.readline()
        if not raw:
            return None
        return bytes(raw).decode("ascii", "replace").strip()

    def command(self, command: str, timeout_s: float | None = None) -> list[str]:
        """Send one AT command; return the lines before its OK; raise ModemError on an error."""
        self.serial.write(command.encode("ascii") + b"\r\n")
        deadline = self.monotonic() + (timeout_s or self.command_timeout_s)
        lines: list[str] = []
        while self.monotonic() < deadline:
            line = self._readline()
            if not line or line == command:  # nothing yet, or the modem's echo
                continue
            if line == "OK":
                return lines
            if line in AT_ERRORS or (line.startswith("AT_") and line.endswith("ERROR")):
                raise ModemError(f"{command.split('=')[0]}: {line}")
            if line.startswith("+EVT:"):
                self.events.append(line)
            else:
                lines.append(line)
        raise ModemError(f"{command.split('=')[0]}: no answer within the timeout")

    def _wait_event(self, done: Callable[[str], bool], timeout_s: float) -> list[str]:
        deadline = self.monotonic() + timeout_s
        seen: list[str] = []
        while self.monotonic() < deadline:
            line = self._readline()
            if not line:
                continue
            seen.append(line)
            if done(line):
                return seen
        raise ModemError(f"no modem event within {timeout_s:g} s (saw {seen[-3:]})")

    # --- LoRaWAN --------------------------------------------------------------------------

    def configure(self, *, dev_eui: str, join_eui: str, app_key: str, band: int = 4) -> None:
        """OTAA credentials and Class A on EU868 (band 4); the modem keeps them in flash."""
        for command in (
            "AT+NJM=1",  # OTAA
            "AT+CLASS=A",
            f"AT+BAND={band}",
            f"AT+DEVEUI={dev_eui}",
            f"AT+APPEUI={join_eui}",
            f"AT+APPKEY={app_key}",
            "AT+ADR=1",
            "AT+CFM=0",  # unconfirmed uplinks: TTN's fair use, and the bridge needs no ack
        ):
            self.command(command)

    def joined(self) -> bool:
        """True when the modem has a LoRaWAN session."""
        lines = self.command("AT+NJS=?")
        return any(line.rsplit("=", 1)[-1].strip() == "1" for line in lines)

    def join(self, timeout_s: float = 60.0) -> None:
        """OTAA join (unless already joined); raise ModemError when it fails."""
        if self.joined():
            return
        # AT+JOIN=<join>:<auto-join at boot>:<retry interval s>:<attempts>
        self.command("AT+JOIN=1:0:10:8")
        seen = self._wait_event(
            lambda line: line == JOINED_EVENT or line.startswith(JOIN_FAILED_PREFIX), timeout_s
        )
        if seen[-1] != JOINED_EVENT:
            raise ModemError(f"join failed: {seen[-1]}")
        log.info("joined the LoRaWAN network")

    def send(self, port: int, payload: bytes) -> Downlink | None:
        """`AT+SEND=port:hex`, then wait for TX done; a downlink shows up as an RX event."""
        self.events.clear()
        self.command(f"AT+SEND={port}:{payload.hex().upper()}")
        seen = list(self.events)
        seen += self._wait_event(lambda line: line.startswith(TX_DONE_EVENTS), self.tx_timeout_s)
        downlinks = [d for d in (parse_rx_event(line) for line in seen) if d is not None]
        if not downlinks:
            # Some firmware reports the RX window after TX done: listen a moment longer.
            deadline = self.monotonic() + self.rx_grace_s
            while self.monotonic() < deadline and not downlinks:
                line = self._readline()
                if line:
                    downlink = parse_rx_event(line)
                    if downlink is not None:
                        downlinks.append(downlink)
        if len(downlinks) > 1:
            log.warning(
                "the modem reported %d downlinks for one uplink; using the last", len(downlinks)
            )
        return downlinks[-1] if downlinks else None
