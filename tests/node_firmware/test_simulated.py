"""The simulated battery rack: deterministic by seed, a hot spot that heats, a fan that cools."""

from __future__ import annotations

import random

from node_firmware.protocol import COLS, ROWS
from node_firmware.simulated import (
    BatteryRackScene,
    SimClock,
    SimulatedAmbientSensor,
    SimulatedCamera,
    SimulatedFan,
)

HOUR_S = 3600.0


def scene(seed: int | str = 1) -> tuple[BatteryRackScene, SimClock]:
    clock = SimClock()
    return BatteryRackScene(random.Random(seed), clock), clock


def readings(seed: int | str, steps: int = 5) -> list[object]:
    s, clock = scene(seed)
    camera, ambient = SimulatedCamera(s), SimulatedAmbientSensor(s)
    out: list[object] = []
    for _ in range(steps):
        clock.advance(30.0)
        out.append((camera.read(), ambient.read()))
    return out


def hottest(grid: list[list[float | None]]) -> float:
    return max(v for row in grid for v in row if v is not None)


def test_same_seed_and_clock_give_the_same_frames() -> None:
    assert readings("7/node1") == readings("7/node1")


def test_different_seeds_give_different_scenes() -> None:
    assert readings("7/node1") != readings("7/node2")
    assert readings(1, 1) != readings(2, 1)


def test_frame_is_24_by_32_of_plausible_temperatures() -> None:
    s, clock = scene()
    clock.advance(60.0)
    frame = s.read_frame()
    assert len(frame) == ROWS and all(len(row) == COLS for row in frame)
    values = [v for row in frame for v in row if v is not None]
    assert len(values) >= ROWS * COLS - 1
    assert min(values) > 20.0 and max(values) < 75.0


def test_cells_are_warm_and_the_room_is_22_to_28() -> None:
    for seed in range(20):
        s, _ = scene(seed)
        assert all(28.0 <= cell.base_c <= 33.5 for cell in s.cells)
        assert len(s.cells) == 18
        assert 22.0 <= s.ambient_c <= 28.0
        # The cells stand out from the rack behind them: a picture worth looking at.
        truth = s.true_frame()
        cell = s.cells[0]
        assert truth[cell.top + 1][cell.left + 1] > truth[0][0]


def test_hot_spot_heats_slowly_toward_60_to_70() -> None:
    s, clock = scene(3)
    start = s.hot_spot_c
    assert start < 45.0
    previous = start
    for _ in range(8):
        clock.advance(HOUR_S / 2)
        now = s.hot_spot_c
        assert now > previous  # monotonic while the fan is off
        previous = now
    assert 58.0 <= previous <= 72.0
    for seed in range(20):  # every rack's fault ends up there
        s, clock = scene(seed)
        clock.advance(10 * HOUR_S)
        assert 58.0 <= s.hot_spot_c <= 72.0


def test_fan_cools_the_hot_spot_visibly() -> None:
    cooled, clock_a = scene(5)
    warm, clock_b = scene(5)
    clock_a.advance(3 * HOUR_S)
    clock_b.advance(3 * HOUR_S)
    before = cooled.hot_spot_c
    assert before == warm.hot_spot_c
    SimulatedFan(cooled).set(True)
    clock_a.advance(0.5 * HOUR_S)
    clock_b.advance(0.5 * HOUR_S)
    assert cooled.hot_spot_c < before - 15.0
    assert warm.hot_spot_c > before
    assert cooled.hot_spot_c < 50.0  # below the default threshold within half an hour


def test_fan_cooling_shows_in_the_camera_frame() -> None:
    s, clock = scene(11)
    camera = SimulatedCamera(s)
    clock.advance(4 * HOUR_S)
    hot = hottest(camera.read())
    SimulatedFan(s).set(True)
    clock.advance(20 * 60)
    assert hottest(camera.read()) < hot - 10.0


def test_switching_the_fan_off_lets_it_heat_again() -> None:
    s, clock = scene(2)
    fan = SimulatedFan(s)
    fan.set(True)
    clock.advance(HOUR_S)
    cool = s.hot_spot_c
    fan.set(False)
    clock.advance(HOUR_S)
    assert s.hot_spot_c > cool + 5.0
    assert fan.switches == 2 and fan.running is False


def test_the_scene_moves_only_with_the_clock() -> None:
    s, clock = scene(4)
    first = s.true_frame()
    assert s.true_frame() == first  # no wall clock inside: same time, same scene
    clock.advance(600.0)
    assert s.true_frame() != first


def test_sensor_noise_is_small_and_gaussian_like() -> None:
    s, clock = scene(6)
    clock.advance(30.0)
    truth = s.true_frame()
    frame = s.read_frame()
    errors = [
        f - t
        for fr, tr in zip(frame, truth, strict=True)
        for f, t in zip(fr, tr, strict=True)
        if f is not None
    ]
    mean = sum(errors) / len(errors)
    spread = (sum((e - mean) ** 2 for e in errors) / len(errors)) ** 0.5
    assert abs(mean) < 0.05
    assert 0.15 < spread < 0.4


def test_a_dead_pixel_shows_up_now_and_then() -> None:
    s, clock = scene(8)
    missing = []
    for _ in range(200):
        clock.advance(30.0)
        frame = s.read_frame()
        missing.append(sum(v is None for row in frame for v in row))
    assert max(missing) == 1  # at most one per frame
    assert 3 <= sum(missing) <= 40  # occasionally, not always


def test_ambient_sensor_reads_22_to_28_and_sometimes_fails() -> None:
    s, clock = scene(9)
    sensor = SimulatedAmbientSensor(s)
    values = []
    for _ in range(500):
        clock.advance(300.0)
        values.append(sensor.read())
    readings_ok = [v for v in values if v is not None]
    assert all(22.0 <= v <= 28.0 for v in readings_ok)
    assert 0 < values.count(None) < 40
