"""The Pi drivers with fake devices, and the node's entry point in --dry-run."""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from node_firmware import __main__ as node_main
from node_firmware.hardware import Downlink
from node_firmware.node import DEFAULT_SETTINGS
from node_firmware.pi import (
    AtModemRadio,
    DhtAmbientSensor,
    MLX90640Camera,
    ModemError,
    RelayFan,
    grid_from_flat,
    parse_rx_event,
)
from node_firmware.protocol import COLS, ROWS, Mode, Settings

# --- camera, sensor, fan ------------------------------------------------------------------


def test_flat_frame_becomes_24_by_32_with_bad_values_as_no_data() -> None:
    values = [20.0 + i / 100 for i in range(ROWS * COLS)]
    values[0] = math.nan
    values[33] = 900.0  # outside the MLX90640's range: a read error
    values[767] = -41.0
    grid = grid_from_flat(values)
    assert len(grid) == ROWS and all(len(r) == COLS for r in grid)
    assert grid[0][0] is None and grid[1][1] is None and grid[23][31] is None
    assert grid[0][1] == values[1] and grid[23][30] == values[766]
    with pytest.raises(ValueError, match="768"):
        grid_from_flat(values[:-1])


class FakeMLX:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def getFrame(self, frame: list[float]) -> None:  # Adafruit's name
        if self.failures:
            self.failures -= 1
            raise ValueError("Frame data error")
        for i in range(len(frame)):
            frame[i] = 25.0


def test_camera_retries_a_failed_read() -> None:
    grid = MLX90640Camera(sensor=FakeMLX(failures=2)).read()
    assert grid[5][5] == 25.0


def test_camera_gives_no_data_when_the_sensor_keeps_failing() -> None:
    grid = MLX90640Camera(sensor=FakeMLX(failures=10)).read()
    assert {v for row in grid for v in row} == {None}


class FakeDHT:
    def __init__(self, values: list[float | Exception | None]) -> None:
        self.values = deque(values)

    @property
    def temperature(self) -> float | None:
        value = self.values.popleft()
        if isinstance(value, Exception):
            raise value
        return value


def test_dht_read_errors_are_no_reading() -> None:
    sensor = DhtAmbientSensor(
        sensor=FakeDHT([RuntimeError("Checksum did not validate"), None, 23.4])
    )
    assert [sensor.read(), sensor.read(), sensor.read()] == [None, None, 23.4]


class FakeOutput:
    def __init__(self) -> None:
        self.value = 0

    def on(self) -> None:
        self.value = 1

    def off(self) -> None:
        self.value = 0


def test_relay_fan_switches_the_output() -> None:
    fan = RelayFan(device=FakeOutput())
    assert fan.running is False
    fan.set(True)
    assert fan.running is True
    fan.set(False)
    assert fan.running is False


# --- modem --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("+EVT:RX_1:-70:8:UNICAST:10:810032", Downlink(10, bytes.fromhex("810032"))),
        ("+EVT:RX_2:-112:-7:UNICAST:10:00FFFB", Downlink(10, bytes.fromhex("00FFFB"))),
        ("+EVT:10:810032", Downlink(10, bytes.fromhex("810032"))),  # RUI3 3.x
        ("at+recv=10,-70,8,3:810032", Downlink(10, bytes.fromhex("810032"))),  # RAK811
        ("+EVT:RX_1:-70:8:UNICAST:0:", None),  # MAC commands only
        ("+EVT:TX_DONE", None),
        ("+EVT:JOINED", None),
        ("OK", None),
    ],
)
def test_modem_downlink_lines(line: str, expected: Downlink | None) -> None:
    assert parse_rx_event(line) == expected


class FakeModem:
    """A serial port with a RUI3 modem behind it: `script` answers each command."""

    def __init__(self, script: Callable[[str], list[str]]) -> None:
        self.script = script
        self.written: list[str] = []
        self.pending: deque[str] = deque()
        self.now = 0.0

    def write(self, data: bytes) -> int:
        command = data.decode().strip()
        self.written.append(command)
        self.pending.extend(self.script(command))
        return len(data)

    def readline(self) -> bytes:
        self.now += 0.1  # every read takes a little (fake) time
        return (self.pending.popleft() + "\r\n").encode() if self.pending else b""

    def monotonic(self) -> float:
        return self.now


def modem(script: Callable[[str], list[str]]) -> tuple[AtModemRadio, FakeModem]:
    fake = FakeModem(script)
    return AtModemRadio(serial=fake, monotonic=fake.monotonic, rx_grace_s=0.5), fake


def test_send_returns_the_downlink_of_the_rx_window() -> None:
    def script(command: str) -> list[str]:
        if command.startswith("AT+SEND="):
            return ["OK", "+EVT:RX_1:-70:8:UNICAST:10:810032", "+EVT:TX_DONE"]
        return ["OK"]

    radio, fake = modem(script)
    assert radio.send(1, bytes.fromhex("0500180FAF83")) == Downlink(10, bytes.fromhex("810032"))
    assert fake.written == ["AT+SEND=1:0500180FAF83"]


def test_send_without_a_downlink_returns_none() -> None:
    radio, _ = modem(lambda c: ["OK", "+EVT:TX_DONE"] if c.startswith("AT+SEND") else ["OK"])
    assert radio.send(2, bytes.fromhex("0100003219")) is None


def test_downlink_reported_after_tx_done_is_caught() -> None:
    radio, _ = modem(lambda c: ["OK", "+EVT:TX_DONE", "+EVT:RX_2:-90:3:UNICAST:10:000096"])
    assert radio.send(1, b"\x00") == Downlink(10, bytes.fromhex("000096"))


def test_modem_errors_raise() -> None:
    radio, _ = modem(lambda c: ["AT_NO_NETWORK_JOINED"])
    with pytest.raises(ModemError, match="AT_NO_NETWORK_JOINED"):
        radio.send(1, b"\x00")
    silent, _ = modem(lambda c: [])
    with pytest.raises(ModemError, match="no answer"):
        silent.command("AT")


def test_join_waits_for_the_joined_event() -> None:
    def script(command: str) -> list[str]:
        if command == "AT+NJS=?":
            return ["AT+NJS=0", "OK"]
        if command.startswith("AT+JOIN="):
            return ["OK", "+EVT:JOINED"]
        return ["OK"]

    radio, fake = modem(script)
    radio.configure(dev_eui="70B3D57ED0000001", join_eui="0" * 16, app_key="00" * 16)
    radio.join()
    assert "AT+BAND=4" in fake.written and "AT+NJM=1" in fake.written
    assert fake.written[-1] == "AT+JOIN=1:0:10:8"


def test_failed_join_raises() -> None:
    def script(command: str) -> list[str]:
        if command == "AT+NJS=?":
            return ["AT+NJS=0", "OK"]
        return ["OK", "+EVT:JOIN_FAILED_RX_TIMEOUT"] if command.startswith("AT+JOIN") else ["OK"]

    radio, _ = modem(script)
    with pytest.raises(ModemError, match="JOIN_FAILED"):
        radio.join()


def test_already_joined_modem_does_not_join_again() -> None:
    radio, fake = modem(lambda c: ["AT+NJS=1", "OK"])
    radio.join()
    assert fake.written == ["AT+NJS=?"]


# --- the entry point ----------------------------------------------------------------------


def test_config_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "node.json"
    conf.write_text(
        json.dumps(
            {
                "interval_s": 120,
                "settings_file": str(tmp_path / "s.json"),
                "defaults": {"fan": "off", "mode": "fast", "threshold": 45},
                "fan": {"gpio": 27},
                "radio": {"port": "/dev/ttyAMA0", "app_key": "from-file"},
            }
        )
    )
    config = node_main.load_config(str(conf), {"THERMAL_NODE_APP_KEY": "from-env"})
    assert config.interval_s == 120
    assert config.defaults == Settings(False, Mode.FAST, 45)
    assert config.fan == {"gpio": 27}
    assert config.radio == {"port": "/dev/ttyAMA0", "app_key": "from-env"}
    assert node_main.load_config(None, {}).defaults == DEFAULT_SETTINGS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"interval_s": 0}', "interval_s"),
        ('{"defaults": {"fan": "on", "mode": "fast", "threshold": 400}}', "defaults"),
        ('{"fan": 17}', "fan must be"),
    ],
)
def test_bad_node_config_is_named(tmp_path: Path, content: str, message: str) -> None:
    conf = tmp_path / "node.json"
    conf.write_text(content)
    with pytest.raises(node_main.NodeConfigError, match=message):
        node_main.load_config(str(conf), {})


def test_example_config_loads() -> None:
    example = Path(node_main.__file__).with_name("node.example.json")
    config = node_main.load_config(str(example), {})
    assert config.interval_s >= 30


def test_dry_run_sends_the_status_then_fragments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = node_main.main(
        [
            "--dry-run",
            "--count",
            "3",
            "--interval",
            "0.001",
            "--settings-file",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["2", "1", "1"]
    assert len(bytes.fromhex(lines[1].split()[2])) == 51


def test_run_keeps_going_after_a_failed_uplink() -> None:
    class FlakyNode:
        def __init__(self) -> None:
            self.calls = 0

        def step(self) -> None:
            self.calls += 1
            if self.calls == 1:
                raise ModemError("AT_BUSY_ERROR")

    node = FlakyNode()
    sent = node_main.run(node, 0.0, threading.Event(), count=2)  # type: ignore[arg-type]
    assert (sent, node.calls) == (2, 3)


def test_missing_pi_libraries_exit_non_zero(tmp_path: Path) -> None:
    # On the host the Pi drivers' packages (pyserial, Blinka, ...) are absent.
    pytest.importorskip("node_firmware.pi")
    try:
        import serial  # noqa: F401
    except ImportError:
        assert node_main.main(["--count", "1", "--settings-file", str(tmp_path / "s.json")]) == 1
    else:
        pytest.skip("pyserial is installed here")
