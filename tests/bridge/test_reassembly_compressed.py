"""Reassembly of compressed frames (docs/protocol.md): completeness and coverage by pixels."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.reassembly import (
    DuplicateFragment,
    FrameCompleted,
    FramePartial,
    Reassembler,
)
from node_firmware.protocol import (
    COLS,
    FRAME_PIXELS,
    Fragment,
    Mode,
    compress_frame,
    decode_fragment,
    encode_fragment,
    fragment_frame,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def grid_of(seed: int) -> list[list[float | None]]:
    rng = random.Random(seed)
    base = [[25.0 + 0.1 * r + 0.05 * c for c in range(COLS)] for r in range(24)]
    return [[round(v + rng.gauss(0, 0.2), 2) for v in row] for row in base]


def fragments_of(seed: int, number: int = 0, step: float = 0.1) -> list[Fragment]:
    frags = compress_frame(grid_of(seed), number, step=step, fan=False, ambient=22)
    return [decode_fragment(encode_fragment(f)) for f in frags]


def test_all_fragments_complete_the_frame_in_any_order() -> None:
    frags = fragments_of(1)
    assert len(frags) > 2
    r = Reassembler()
    shuffled = frags[:]
    random.Random(3).shuffle(shuffled)
    events = [e for i, f in enumerate(shuffled) for e in r.receive("n", f, at(i))]
    done = [e for e in events if isinstance(e, FrameCompleted)]
    assert len(done) == 1
    frame = done[0].frame
    assert frame.mode is Mode.COMPRESSED and frame.complete and frame.coverage == 1.0
    assert frame.received == tuple(range(len(frags)))
    expected = [p for f in frags for p in f.pixels]
    assert [v for row in frame.grid for v in row] == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.data())
def test_lost_fragments_leave_a_partial_frame_with_their_pixels_missing(seed, data) -> None:  # type: ignore[no-untyped-def]
    frags = fragments_of(seed, number=4, step=0.2)
    lost = data.draw(
        st.sets(st.sampled_from(range(len(frags))), min_size=1, max_size=len(frags) - 1)
    )
    kept = [f for f in frags if f.index not in lost]
    r = Reassembler(frame_timeout_s=60)
    for i, f in enumerate(kept):
        assert not any(isinstance(e, FrameCompleted) for e in r.receive("n", f, at(i)))
    closed = [e for e in r.expire(at(1000)) if isinstance(e, FramePartial)]
    assert len(closed) == 1
    frame = closed[0].frame
    carried = {p for f in kept for p in f.pixel_range()}
    assert frame.coverage == len(carried) / FRAME_PIXELS
    assert not frame.complete
    flat = [v for row in frame.grid for v in row]
    full = [p for f in frags for p in f.pixels]
    for p in range(FRAME_PIXELS):
        assert flat[p] == (full[p] if p in carried else None)


def test_duplicate_compressed_fragment_is_ignored() -> None:
    frags = fragments_of(2)
    r = Reassembler()
    r.receive("n", frags[0], at(0))
    assert r.receive("n", frags[0], at(1)) == [
        DuplicateFragment("n", Mode.COMPRESSED, 0, frags[0].index)
    ]


def test_restore_rebuilds_an_open_compressed_frame() -> None:
    frags = fragments_of(5)
    r = Reassembler.restore([("n", f, at(i), at(0)) for i, f in enumerate(frags[:-1])])
    (frame,) = r.open_frames()
    assert frame.mode is Mode.COMPRESSED and not frame.complete
    events = r.receive("n", frags[-1], at(100))
    assert any(isinstance(e, FrameCompleted) for e in events)


def test_a_compressed_frame_carries_its_step_and_a_slow_one_the_protocols_resolution() -> None:
    r = Reassembler()
    events = [e for i, f in enumerate(fragments_of(5, step=0.5)) for e in r.receive("n", f, at(i))]
    [done] = [e for e in events if isinstance(e, FrameCompleted)]
    assert done.frame.step == 0.5
    slow = fragment_frame(grid_of(5), Mode.SLOW, 1, fan=False, ambient=22)
    events = [e for i, f in enumerate(slow) for e in r.receive("s", f, at(i))]
    [done] = [e for e in events if isinstance(e, FrameCompleted)]
    assert done.frame.step == 0.1


def test_a_frame_of_mixed_steps_reports_the_coarsest() -> None:
    # The node picks the step per frame; should fragments ever disagree, the frame's values
    # are only as precise as its coarsest fragment.
    fine, coarse = fragments_of(6, step=0.2), fragments_of(6, step=1.0)
    r = Reassembler()
    r.receive("n", fine[0], at(0))
    r.receive("n", coarse[-1], at(1))
    [open_frame] = r.open_frames()
    assert open_frame.step == 1.0
