"""The node's program logic on simulated hardware: frames, the fan rule, settings downlinks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_firmware import protocol
from node_firmware.hardware import Downlink, JsonSettingsStore
from node_firmware.node import DEFAULT_SETTINGS, Node, as_sent, hottest_pixel
from node_firmware.protocol import (
    COLS,
    FRAGMENT_PORT,
    ROWS,
    SETTINGS_PORT,
    STATUS_PORT,
    Fragment,
    Mode,
    NodeStatus,
    Settings,
)
from node_firmware.simulated import MemorySettingsStore, ScriptedRadio, SimulatedFan

Grid = list[list[float | None]]


class FixedCamera:
    """Returns the frames it is given, the last one forever."""

    def __init__(self, *frames: Grid) -> None:
        self.frames = list(frames)
        self.reads = 0

    def read(self) -> Grid:
        self.reads += 1
        return self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]


class FixedAmbient:
    def __init__(self, value: float | None = 24.4) -> None:
        self.value = value

    def read(self) -> float | None:
        return self.value


def uniform_grid(value: float, hot: float | None = None) -> Grid:
    grid: Grid = [[value + 0.1 * ((r + c) % 7) for c in range(COLS)] for r in range(ROWS)]
    if hot is not None:
        grid[12][20] = hot
    return grid


class Rig:
    """A Node wired to simulated hardware, with helpers to read what it sent."""

    def __init__(
        self,
        *frames: Grid,
        store: MemorySettingsStore | JsonSettingsStore | None = None,
        settings: Settings = DEFAULT_SETTINGS,
        first_frame_number: int = 0,
        ambient: float | None = 24.4,
    ) -> None:
        self.camera = FixedCamera(*(frames or (uniform_grid(28.0),)))
        self.fan = SimulatedFan()
        self.radio = ScriptedRadio()
        self.store = store if store is not None else MemorySettingsStore()
        self.node = Node(
            self.camera,
            FixedAmbient(ambient),
            self.fan,
            self.radio,
            self.store,
            default_settings=settings,
            first_frame_number=first_frame_number,
        )

    def step(self) -> Fragment | NodeStatus:
        sent = self.node.step()
        return protocol.decode_uplink(sent.port, sent.payload)

    def fragment(self) -> Fragment:
        decoded = self.step()
        assert isinstance(decoded, Fragment), decoded
        return decoded

    def status(self) -> NodeStatus:
        decoded = self.step()
        assert isinstance(decoded, NodeStatus), decoded
        return decoded

    def boot(self) -> NodeStatus:
        """The first uplink after boot is the status."""
        return self.status()

    def send_settings(self, settings: Settings) -> None:
        """Queue an FPort 10 downlink: it arrives in the RX window of the next uplink."""
        self.radio.queue(Downlink(SETTINGS_PORT, protocol.encode_settings(settings)))


def assemble(fragments: Sequence[Fragment], mode: Mode) -> list[list[float | None]]:
    rows, cols = protocol.grid_shape(mode)
    grid: list[list[float | None]] = [[None] * cols for _ in range(rows)]
    for fragment in fragments:
        for k, r in enumerate(fragment.rows()):
            grid[r] = list(fragment.pixels[k * cols : (k + 1) * cols])
    return grid


pixel = st.one_of(
    st.none(),
    st.floats(min_value=-250.0, max_value=250.0, allow_nan=False),
)
grids = st.lists(st.lists(pixel, min_size=COLS, max_size=COLS), min_size=ROWS, max_size=ROWS)


# --- frames ------------------------------------------------------------------------------


def test_first_uplink_after_boot_is_the_status() -> None:
    rig = Rig()
    status = rig.boot()
    assert status == NodeStatus(
        version=1, fan_requested=False, fan_running=False, mode=Mode.SLOW, threshold=50, ambient=24
    )
    assert rig.radio.sent[0][0] == STATUS_PORT
    assert rig.camera.reads == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=grids)
def test_slow_frame_round_trips_through_the_bridge_decoder(grid: Grid) -> None:
    rig = Rig(grid)
    rig.boot()
    fragments = [rig.fragment() for _ in range(24)]
    assert [f.index for f in fragments] == list(range(24))
    assert {f.frame_number for f in fragments} == {0}
    assert {f.mode for f in fragments} == {Mode.SLOW}
    assert all(len(payload) == 51 for port, payload in rig.radio.sent[1:])
    expected = [[as_sent(v) for v in row] for row in grid]
    assert assemble(fragments, Mode.SLOW) == expected
    assert rig.camera.reads == 1  # one capture per frame, sent over 24 uplinks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=grids)
def test_fast_frame_round_trips_as_block_maxima(grid: Grid) -> None:
    rig = Rig(grid, settings=Settings(fan=False, mode=Mode.FAST, threshold=150))
    rig.boot()
    fragments = [rig.fragment() for _ in range(2)]
    assert [f.index for f in fragments] == [0, 1]
    assert all(len(payload) == 39 for port, payload in rig.radio.sent[1:])
    maxima = protocol.block_maxima(grid)
    expected = [[as_sent(v) for v in row] for row in maxima]
    assert assemble(fragments, Mode.FAST) == expected


def test_frame_number_counts_up_modulo_64() -> None:
    rig = Rig(settings=Settings(fan=False, mode=Mode.FAST, threshold=50), first_frame_number=62)
    rig.boot()
    numbers = [rig.fragment().frame_number for _ in range(8)]
    assert numbers == [62, 62, 63, 63, 0, 0, 1, 1]
    assert rig.camera.reads == 4


def test_every_fragment_reports_the_latest_ambient_reading() -> None:
    rig = Rig(ambient=None)
    rig.boot()
    assert rig.fragment().ambient is None


# --- the fan rule ------------------------------------------------------------------------


def test_fan_starts_when_the_hottest_pixel_of_the_last_frame_is_above_the_threshold() -> None:
    hot = uniform_grid(30.0, hot=55.0)
    rig = Rig(hot, settings=Settings(fan=False, mode=Mode.FAST, threshold=50))
    assert rig.boot().fan_running is False  # no frame yet: nothing to cool
    first = rig.fragment()
    assert rig.fan.running is True
    assert first.fan is True  # the fan bit is the fan's real state when sent
    assert rig.node.hottest_c == 55.0


def test_fan_stops_when_the_next_frame_is_cool_again() -> None:
    rig = Rig(
        uniform_grid(30.0, hot=55.0),
        uniform_grid(30.0, hot=49.0),
        settings=Settings(fan=False, mode=Mode.FAST, threshold=50),
    )
    rig.boot()
    assert [rig.fragment().fan for _ in range(2)] == [True, True]
    assert [rig.fragment().fan for _ in range(2)] == [False, False]
    assert rig.fan.running is False


def test_fan_rule_needs_strictly_above_the_threshold() -> None:
    rig = Rig(uniform_grid(30.0, hot=50.0), settings=Settings(False, Mode.FAST, 50))
    rig.boot()
    rig.fragment()
    assert rig.fan.running is False


def test_user_request_runs_the_fan_even_when_cool() -> None:
    rig = Rig(uniform_grid(20.0), settings=Settings(fan=True, mode=Mode.SLOW, threshold=50))
    status = rig.boot()
    assert status.fan_requested is True and status.fan_running is True
    assert rig.fragment().fan is True


def test_frame_without_any_reading_does_not_run_the_fan() -> None:
    dead: Grid = [[None] * COLS for _ in range(ROWS)]
    rig = Rig(dead, settings=Settings(False, Mode.FAST, -40))
    rig.boot()
    fragment = rig.fragment()
    assert set(fragment.pixels) == {None}
    assert rig.fan.running is False
    assert hottest_pixel(dead) is None


def test_fan_rule_uses_the_value_as_sent() -> None:
    # 50.04 °C is sent as 50.0, which is not above 50: the bridge and the node agree.
    rig = Rig(uniform_grid(30.0, hot=50.04), settings=Settings(False, Mode.FAST, 50))
    rig.boot()
    rig.fragment()
    assert rig.fan.running is False


# --- settings downlinks ------------------------------------------------------------------


def test_settings_downlink_is_applied_saved_and_answered_with_a_status() -> None:
    store = MemorySettingsStore()
    rig = Rig(uniform_grid(28.0), store=store)
    rig.boot()
    rig.fragment()
    wanted = Settings(fan=True, mode=Mode.SLOW, threshold=42)
    rig.send_settings(wanted)
    rig.fragment()  # the downlink arrives in this uplink's RX windows
    assert rig.node.settings == wanted
    assert rig.fan.running is True  # at once, not at the next frame
    assert store.settings == wanted
    status = rig.status()  # before the next fragment
    assert status == NodeStatus(1, True, True, Mode.SLOW, 42, 24)
    fragment = rig.fragment()
    assert fragment.index == 2  # same mode: the frame goes on
    assert fragment.fan is True


def test_mode_change_abandons_the_frame_in_progress() -> None:
    rig = Rig(uniform_grid(28.0), first_frame_number=9)
    rig.boot()
    for index in range(5):
        assert rig.fragment().index == index
    rig.send_settings(Settings(fan=False, mode=Mode.FAST, threshold=50))
    abandoned = rig.fragment()
    assert (abandoned.mode, abandoned.frame_number, abandoned.index) == (Mode.SLOW, 9, 5)
    assert rig.status().mode is Mode.FAST
    first, second = rig.fragment(), rig.fragment()
    assert (first.mode, first.frame_number, first.index) == (Mode.FAST, 10, 0)
    assert (second.mode, second.frame_number, second.index) == (Mode.FAST, 10, 1)
    assert rig.camera.reads == 2


def test_mode_change_at_a_frame_boundary_starts_the_new_mode() -> None:
    rig = Rig(settings=Settings(False, Mode.FAST, 50))
    rig.boot()
    rig.fragment()
    rig.send_settings(Settings(False, Mode.SLOW, 50))
    last = rig.fragment()
    assert (last.mode, last.index) == (Mode.FAST, 1)
    rig.status()
    new = rig.fragment()
    assert (new.mode, new.frame_number, new.index) == (Mode.SLOW, 1, 0)


def test_settings_downlink_during_the_status_uplink_is_answered_too() -> None:
    rig = Rig()
    rig.send_settings(Settings(True, Mode.FAST, 60))
    rig.boot()
    assert rig.status() == NodeStatus(1, True, True, Mode.FAST, 60, 24)


def test_each_settings_downlink_gets_its_own_status_even_if_unchanged() -> None:
    rig = Rig()
    rig.boot()
    rig.send_settings(DEFAULT_SETTINGS)
    rig.fragment()
    assert rig.status().threshold == DEFAULT_SETTINGS.threshold
    assert rig.node.applied_settings == 1


@pytest.mark.parametrize(
    ("downlink", "message"),
    [
        (Downlink(SETTINGS_PORT, bytes.fromhex("8100")), "settings must be 3 bytes"),
        (Downlink(SETTINGS_PORT, bytes.fromhex("000097")), "threshold must be"),
        (Downlink(11, bytes.fromhex("810032")), "FPort 11"),
    ],
    ids=["short", "threshold-151", "other-port"],
)
def test_invalid_downlink_is_logged_and_ignored(
    downlink: Downlink, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemorySettingsStore()
    rig = Rig(store=store)
    rig.boot()
    rig.radio.queue(downlink)
    with caplog.at_level(logging.WARNING, logger="node_firmware.node"):
        rig.fragment()
    assert message in caplog.text
    assert rig.node.settings == DEFAULT_SETTINGS
    assert store.saves == 0
    assert isinstance(rig.step(), Fragment)  # no status: nothing was applied


# --- persistence -------------------------------------------------------------------------


def test_settings_survive_a_reboot(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    rig = Rig(store=JsonSettingsStore(path))
    assert rig.node.settings == DEFAULT_SETTINGS  # first boot: no file, defaults
    rig.boot()
    wanted = Settings(fan=True, mode=Mode.FAST, threshold=-5)
    rig.send_settings(wanted)
    rig.fragment()
    # Power cut; the node boots again with the same flash.
    rebooted = Rig(store=JsonSettingsStore(path))
    assert rebooted.node.settings == wanted
    assert rebooted.boot() == NodeStatus(1, True, True, Mode.FAST, -5, 24)
    assert rebooted.fragment().mode is Mode.FAST


def test_settings_file_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "node" / "settings.json"
    JsonSettingsStore(path).save(Settings(fan=True, mode=Mode.FAST, threshold=45))
    assert path.read_text() == '{"fan": "on", "mode": "fast", "threshold": 45}\n'
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"fan": "on", "mode": "fast"}',
        '{"fan": "on", "mode": "x", "threshold": 5}',
        '{"fan": "on", "mode": "fast", "threshold": 500}',
        "[]",
    ],
)
def test_unusable_settings_file_falls_back_to_defaults(
    content: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        rig = Rig(store=JsonSettingsStore(path))
    assert rig.node.settings == DEFAULT_SETTINGS
    assert "unusable" in caplog.text


def test_a_failing_flash_does_not_stop_the_node(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenStore(MemorySettingsStore):
        def save(self, settings: Settings) -> None:
            raise OSError("read-only file system")

    rig = Rig(store=BrokenStore())
    rig.boot()
    rig.send_settings(Settings(True, Mode.SLOW, 45))
    with caplog.at_level(logging.ERROR):
        rig.fragment()
    assert "read-only file system" in caplog.text
    assert rig.node.settings.fan is True
    assert rig.status().fan_requested is True


def test_uplinks_are_always_protocol_ports() -> None:
    rig = Rig()
    for _ in range(30):
        rig.step()
    assert {port for port, _ in rig.radio.sent} == {STATUS_PORT, FRAGMENT_PORT}
