"""Simulated hardware for the host: a battery-rack scene, its camera, sensor, fan, radio, flash.

Everything here is driven by a `random.Random` and a simulated clock that the caller passes in
(seconds as a float); nothing reads the wall clock, so a seed and a sequence of clock readings
always give the same frames.

The scene: three shelves of battery cells (warm, ~25–35 °C) in a room at ~22–28 °C. One cell
has a fault: a hot spot that heats slowly toward ~60–70 °C while the fan is off, and that the
fan cools down within minutes (so the dashboard shows the fan working). The camera adds
Gaussian noise and now and then loses a pixel (None), like a real MLX90640 read.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from node_firmware.hardware import Downlink
from node_firmware.protocol import COLS, ROWS, Settings

Clock = Callable[[], float]

# Shelves of cells: grid rows of each shelf, and the first column of each 4-column cell.
SHELF_ROWS = ((2, 7), (9, 14), (16, 21))  # [start, stop)
CELL_COLUMNS = (1, 6, 11, 16, 21, 26)
CELL_WIDTH = 4

HEAT_TIME_CONSTANT_S = 3600.0  # the hot spot approaches its maximum over hours
FAN_COOL_TIME_CONSTANT_S = 600.0  # with the fan on it drops within minutes
CELL_FAN_COOLING_C = 4.0  # the fan also cools every cell by a few degrees
CELL_FAN_TIME_CONSTANT_S = 300.0
HOT_SPOT_SIGMA_PX = 1.6
PIXEL_NOISE_C = 0.25  # MLX90640 per-pixel noise at 2 Hz is a few tenths of a degree
DEAD_PIXEL_CHANCE = 0.08  # per frame: one pixel without a reading
AMBIENT_NOISE_C = 0.2
AMBIENT_DAILY_SWING_C = 1.5
AMBIENT_FAILURE_CHANCE = 0.02  # DHT22 reads fail now and then
DAY_S = 86400.0


class SimClock:
    """A clock that moves only when told to: `advance(seconds)`; call it for the time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward and return the new time."""
        self.now += seconds
        return self.now


@dataclass(frozen=True, slots=True)
class Cell:
    """One battery cell in the picture: its pixel box and its resting temperature."""

    top: int
    bottom: int  # exclusive
    left: int
    right: int  # exclusive
    base_c: float


class BatteryRackScene:
    """The thermal world a simulated node looks at; its state moves with the clock."""

    def __init__(self, rng: random.Random, clock: Clock) -> None:
        self.rng = rng
        self.clock = clock
        self.ambient_base_c = rng.uniform(23.5, 26.5)
        self.ambient_phase = rng.uniform(0.0, 2 * math.pi)
        self.cells = [
            Cell(top, bottom, left, left + CELL_WIDTH, rng.uniform(28.0, 33.5))
            for top, bottom in SHELF_ROWS
            for left in CELL_COLUMNS
        ]
        faulty = rng.choice(self.cells)
        self.hot_row = (faulty.top + faulty.bottom - 1) / 2 + rng.uniform(-1.0, 1.0)
        self.hot_col = (faulty.left + faulty.right - 1) / 2 + rng.uniform(-0.8, 0.8)
        self.hot_base_c = faulty.base_c
        self.excess_max_c = rng.uniform(30.0, 36.0)  # peak heads for ~60-70 °C
        self.excess_fan_c = rng.uniform(4.0, 8.0)  # where the fan holds it
        self.excess_c = rng.uniform(5.0, 9.0)  # the fault starts mild
        self.fan_cooling = 0.0  # 0 = fan long off, 1 = fan long on
        self.fan_on = False
        self.t = clock()

    # --- physics --------------------------------------------------------------------------

    def advance(self) -> None:
        """Integrate the scene up to the clock's time (the fan state held since the last call)."""
        now = self.clock()
        dt = now - self.t
        if dt <= 0:
            return
        self.t = now
        if self.fan_on:
            target, tau = self.excess_fan_c, FAN_COOL_TIME_CONSTANT_S
        else:
            target, tau = self.excess_max_c, HEAT_TIME_CONSTANT_S
        # Exact first-order relaxation toward the target: no step-size error at any interval.
        self.excess_c = target + (self.excess_c - target) * math.exp(-dt / tau)
        cooling_target = 1.0 if self.fan_on else 0.0
        self.fan_cooling = cooling_target + (self.fan_cooling - cooling_target) * math.exp(
            -dt / CELL_FAN_TIME_CONSTANT_S
        )

    def set_fan(self, on: bool) -> None:
        """The fan changes state now: what happened before now happened with the old state."""
        self.advance()
        self.fan_on = on

    @property
    def ambient_c(self) -> float:
        """The room's air temperature without sensor noise."""
        self.advance()
        swing = AMBIENT_DAILY_SWING_C * math.sin(2 * math.pi * self.t / DAY_S + self.ambient_phase)
        return self.ambient_base_c + swing

    @property
    def hot_spot_c(self) -> float:
        """The hot spot's peak temperature without noise (what the fan rule fights)."""
        self.advance()
        return self.hot_base_c - CELL_FAN_COOLING_C * self.fan_cooling + self.excess_c

    def true_frame(self) -> list[list[float]]:
        """The noiseless 24 x 32 temperatures at the clock's time."""
        self.advance()
        ambient = self.ambient_c
        cooling = CELL_FAN_COOLING_C * self.fan_cooling
        # The rack and the wall behind: a little above the air, warmer toward the top.
        grid = [[ambient + 0.5 + 0.04 * (ROWS - r) for _ in range(COLS)] for r in range(ROWS)]
        for cell in self.cells:
            mid_r = (cell.top + cell.bottom - 1) / 2
            mid_c = (cell.left + cell.right - 1) / 2
            for r in range(cell.top, cell.bottom):
                for c in range(cell.left, cell.right):
                    dome = 0.8 - 0.25 * ((r - mid_r) ** 2 / 4 + (c - mid_c) ** 2 / 2)
                    grid[r][c] = cell.base_c - cooling + dome
            # Warm air between neighbouring cells of a shelf.
            for r in range(cell.top, cell.bottom):
                if cell.right < COLS:
                    grid[r][cell.right] = max(grid[r][cell.right], (cell.base_c + ambient) / 2)
        two_sigma2 = 2 * HOT_SPOT_SIGMA_PX**2
        for r in range(ROWS):
            for c in range(COLS):
                d2 = (r - self.hot_row) ** 2 + (c - self.hot_col) ** 2
                if d2 < 36:
                    grid[r][c] += self.excess_c * math.exp(-d2 / two_sigma2)
        return grid

    # --- sensors --------------------------------------------------------------------------

    def read_frame(self) -> list[list[float | None]]:
        """What the camera reports: the scene plus noise, occasionally a pixel missing."""
        gauss = self.rng.gauss
        frame: list[list[float | None]] = [
            [v + gauss(0.0, PIXEL_NOISE_C) for v in row] for row in self.true_frame()
        ]
        if self.rng.random() < DEAD_PIXEL_CHANCE:
            frame[self.rng.randrange(ROWS)][self.rng.randrange(COLS)] = None
        return frame

    def read_ambient(self) -> float | None:
        """What the ambient sensor reports (None when a read fails, like a DHT22's)."""
        value = self.ambient_c + self.rng.gauss(0.0, AMBIENT_NOISE_C)
        if self.rng.random() < AMBIENT_FAILURE_CHANCE:
            return None
        return min(max(value, 22.0), 28.0)


class SimulatedCamera:
    """`ThermalCamera` looking at a scene."""

    def __init__(self, scene: BatteryRackScene) -> None:
        self.scene = scene
        self.reads = 0

    def read(self) -> list[list[float | None]]:
        """One frame of the scene."""
        self.reads += 1
        return self.scene.read_frame()


class SimulatedAmbientSensor:
    """`AmbientSensor` in the scene's room."""

    def __init__(self, scene: BatteryRackScene) -> None:
        self.scene = scene

    def read(self) -> float | None:
        """The room's temperature, noisy, sometimes no reading."""
        return self.scene.read_ambient()


class SimulatedFan:
    """`Fan` that cools the scene."""

    def __init__(self, scene: BatteryRackScene | None = None) -> None:
        self.scene = scene
        self._running = False
        self.switches = 0

    @property
    def running(self) -> bool:
        """True while the fan runs."""
        return self._running

    def set(self, on: bool) -> None:
        """Switch the fan; the scene starts cooling (or warming) from now."""
        if on != self._running:
            self.switches += 1
        self._running = on
        if self.scene is not None:
            self.scene.set_fan(on)


class MemorySettingsStore:
    """`SettingsStore` in memory: a simulated node's flash (survives a simulated reboot)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.saves = 0

    def load(self) -> Settings | None:
        """The saved settings, if any."""
        return self.settings

    def save(self, settings: Settings) -> None:
        """Keep them."""
        self.settings = settings
        self.saves += 1


class ScriptedRadio:
    """`Radio` for tests: records every uplink; queued downlinks arrive Class A style, one in
    the RX windows of each following uplink."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.downlinks: deque[Downlink] = deque()

    def queue(self, downlink: Downlink) -> None:
        """Deliver this downlink after the next uplink."""
        self.downlinks.append(downlink)

    def send(self, port: int, payload: bytes) -> Downlink | None:
        """Record the uplink; hand back the next queued downlink, if any."""
        self.sent.append((port, payload))
        return self.downlinks.popleft() if self.downlinks else None
