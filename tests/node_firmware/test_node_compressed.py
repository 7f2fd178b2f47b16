"""The node in compressed mode: per-frame choice, slow fallback, status and settings."""

from __future__ import annotations

import random

from node_firmware import protocol
from node_firmware.hardware import Downlink
from node_firmware.node import Node
from node_firmware.protocol import Mode, Settings
from node_firmware.simulated import MemorySettingsStore, ScriptedRadio, SimulatedFan


class FixedCamera:
    def __init__(self, grid: list[list[float | None]]) -> None:
        self.grid = grid

    def read(self) -> list[list[float | None]]:
        return self.grid


class NoAmbient:
    def read(self) -> float | None:
        return 24.0


def smooth_grid() -> list[list[float | None]]:
    rng = random.Random(2)
    return [[25 + 0.1 * r + rng.gauss(0, 0.15) for _ in range(32)] for r in range(24)]


def node_with(grid: list[list[float | None]], settings: Settings) -> tuple[Node, ScriptedRadio]:
    radio = ScriptedRadio()
    node = Node(
        FixedCamera(grid),
        NoAmbient(),
        SimulatedFan(),
        radio,
        MemorySettingsStore(settings),
    )
    return node, radio


def fragments_of_first_frame(node: Node, radio: ScriptedRadio) -> list[protocol.Fragment]:
    node.step()  # the boot status
    node.step()
    count = len(node.pending) + 1
    for _ in range(count - 1):
        node.step()
    return [protocol.decode_fragment(p) for port, p in radio.sent if port == 1]


def test_compressed_node_sends_a_whole_frame_in_few_uplinks() -> None:
    node, radio = node_with(smooth_grid(), Settings(False, Mode.COMPRESSED, 50, 0.5))
    fragments = fragments_of_first_frame(node, radio)
    status = protocol.decode_status(radio.sent[0][1])
    assert status.mode is Mode.COMPRESSED and status.step == 0.5
    assert all(f.mode is Mode.COMPRESSED and f.step == 0.5 for f in fragments)
    assert 1 <= len(fragments) <= 6 and fragments[-1].last
    _, covered = protocol.decompress_fragments(fragments)
    assert len(covered) == protocol.FRAME_PIXELS


def test_incompressible_frame_falls_back_to_slow_mode() -> None:
    rng = random.Random(4)
    noise: list[list[float | None]] = [
        [rng.uniform(-200, 200) for _ in range(32)] for _ in range(24)
    ]
    node, radio = node_with(noise, Settings(False, Mode.COMPRESSED, 50))
    fragments = fragments_of_first_frame(node, radio)
    assert len(fragments) == 24 and {f.mode for f in fragments} == {Mode.SLOW}
    assert node.settings.mode is Mode.COMPRESSED


def test_compressed_settings_downlink_is_applied() -> None:
    node, radio = node_with(smooth_grid(), Settings(False, Mode.SLOW, 50))
    node.step()
    radio.queue(Downlink(10, protocol.encode_settings(Settings(True, Mode.COMPRESSED, 40, 0.2))))
    node.step()
    assert node.settings == Settings(True, Mode.COMPRESSED, 40, 0.2)
    status = node.step()
    assert protocol.decode_status(status.payload).step == 0.2
    assert protocol.decode_fragment(node.step().payload).mode is Mode.COMPRESSED
