"""The reassembly state machine: PROTOCOL.md's rules, and properties over any arrival order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.reassembly import (
    DuplicateFragment,
    Event,
    FragmentAccepted,
    Frame,
    FrameCompleted,
    FramePartial,
    FrameUpdated,
    Reassembler,
)
from node_firmware.protocol import Fragment, Mode, fragment_frame

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def grid_of(seed: int) -> list[list[float | None]]:
    rng = random.Random(seed)
    return [[round(20 + rng.random() * 30, 1) for _ in range(32)] for _ in range(24)]


def frags(seed: int, mode: Mode = Mode.SLOW, number: int = 0, **kw: object) -> list[Fragment]:
    return fragment_frame(
        grid_of(seed), mode, number, fan=bool(kw.get("fan", False)), ambient=kw.get("ambient", 22)
    )  # type: ignore[arg-type]


def expected_grid(seed: int, mode: Mode) -> tuple[tuple[float | None, ...], ...]:
    fs = frags(seed, mode)
    cols = 32 if mode is Mode.SLOW else 8
    pixels = [p for f in fs for p in f.pixels]
    return tuple(tuple(pixels[i : i + cols]) for i in range(0, len(pixels), cols))


def closed(events: list[Event]) -> list[Frame]:
    return [e.frame for e in events if isinstance(e, FrameCompleted | FramePartial | FrameUpdated)]


def feed(r: Reassembler, device: str, fragments: list[Fragment], start: float = 0) -> list[Event]:
    events: list[Event] = []
    for i, f in enumerate(fragments):
        events += r.receive(device, f, at(start + i))
    return events


def test_slow_frame_in_order_completes_with_the_original_grid() -> None:
    r = Reassembler()
    events = feed(r, "n1", frags(1))
    accepted = [e for e in events if isinstance(e, FragmentAccepted)]
    assert len(accepted) == 24 and all(e.opened_at == at(0) for e in accepted)
    [done] = [e for e in events if isinstance(e, FrameCompleted)]
    frame = done.frame
    assert frame.complete and frame.coverage == 1.0
    assert frame.grid == expected_grid(1, Mode.SLOW)
    assert (frame.first_received_at, frame.last_received_at) == (at(0), at(23))
    assert frame.ambient == 22 and frame.opened_at == at(0)
    assert r.open_frames() == []


def test_fast_frame_is_two_fragments_of_6x8() -> None:
    r = Reassembler()
    events = feed(r, "n1", list(reversed(frags(2, Mode.FAST, 9))))
    [frame] = closed(events)
    assert frame.complete and frame.mode is Mode.FAST and frame.frame_number == 9
    assert len(frame.grid) == 6 and all(len(row) == 8 for row in frame.grid)
    assert frame.grid == expected_grid(2, Mode.FAST)


def test_duplicates_are_ignored() -> None:
    r = Reassembler()
    fs = frags(3)
    r.receive("n1", fs[0], at(0))
    assert r.receive("n1", fs[0], at(5)) == [DuplicateFragment("n1", Mode.SLOW, 0, 0)]
    [frame] = closed(feed(r, "n1", fs[1:], 10))
    assert frame.complete and frame.grid == expected_grid(3, Mode.SLOW)
    # A copy delivered after the frame closed is still a duplicate, not a new frame.
    assert r.receive("n1", fs[4], at(100)) == [DuplicateFragment("n1", Mode.SLOW, 0, 4)]
    assert r.open_frames() == []


def test_newer_frame_completing_closes_the_older_partial_one() -> None:
    r = Reassembler()
    feed(r, "n1", frags(4, number=7)[:10])
    events = feed(r, "n1", frags(5, number=8), 100)
    frames = closed(events)
    assert [(f.frame_number, f.complete) for f in frames] == [(7, False), (8, True)]
    partial = next(e for e in events if isinstance(e, FramePartial))
    assert partial.reason == "superseded"
    old = frames[0]
    assert old.received == tuple(range(10)) and old.coverage == 10 / 24
    assert all(row == (None,) * 32 for row in old.grid[10:])
    assert old.grid[:10] == expected_grid(4, Mode.SLOW)[:10]


def test_mode_change_abandons_the_frame_in_progress() -> None:
    r = Reassembler()
    feed(r, "n1", frags(6, Mode.SLOW, 3)[:5])
    events = feed(r, "n1", frags(7, Mode.FAST, 4), 50)
    frames = closed(events)
    assert [(f.mode, f.complete) for f in frames] == [(Mode.SLOW, False), (Mode.FAST, True)]


def test_timeout_closes_a_silent_frame() -> None:
    r = Reassembler(frame_timeout_s=60)
    feed(r, "n1", frags(8)[:3])
    assert r.expire(at(61)) == []  # last fragment at t=2
    [event] = r.expire(at(62))
    assert isinstance(event, FramePartial) and event.reason == "timeout"
    assert event.frame.received == (0, 1, 2)
    assert r.open_frames() == []


def test_late_fragment_updates_a_recently_closed_frame() -> None:
    r = Reassembler()
    fs = frags(9, number=1)
    feed(r, "n1", fs[:23])
    feed(r, "n1", frags(10, number=2), 30)  # closes frame 1 without its last row
    [event] = r.receive("n1", fs[23], at(60))
    assert isinstance(event, FrameUpdated)
    assert event.frame.complete and event.frame.grid == expected_grid(9, Mode.SLOW)
    assert event.frame.opened_at == at(0)
    assert r.open_frames() == []


def test_frame_number_wrap_with_an_open_frame_starts_a_new_frame() -> None:
    r = Reassembler()
    old = frags(11, Mode.FAST, 5)
    new = frags(12, Mode.FAST, 5)
    r.receive("n1", old[0], at(0))
    events = r.receive("n1", new[0], at(1000))  # same identity, different content
    assert [type(e) for e in events] == [FramePartial, FragmentAccepted]
    events = r.receive("n1", new[1], at(1010))
    [frame] = closed(events)
    assert frame.complete and frame.grid == expected_grid(12, Mode.FAST)


def test_wrap_after_a_complete_frame_opens_a_new_one() -> None:
    r = Reassembler()
    feed(r, "n1", frags(13, Mode.FAST, 5))
    events = r.receive("n1", frags(14, Mode.FAST, 5)[1], at(100))
    assert [type(e) for e in events] == [FragmentAccepted]
    assert events[0].opened_at == at(100)  # type: ignore[union-attr]


def test_devices_interleave_independently() -> None:
    r = Reassembler()
    a, b = frags(15), frags(16, Mode.FAST)
    events: list[Event] = []
    for i in range(24):
        events += r.receive("a", a[i], at(i))
        if i < 2:
            events += r.receive("b", b[i], at(i))
    done = {f.device_id: f for f in closed(events)}
    assert done["a"].grid == expected_grid(15, Mode.SLOW)
    assert done["b"].grid == expected_grid(16, Mode.FAST)
    assert all(f.complete for f in done.values())


def test_fan_and_ambient_come_from_the_latest_fragment() -> None:
    r = Reassembler()
    fs = frags(17, Mode.FAST)
    late = Fragment(Mode.FAST, 0, True, 1, None, fs[1].pixels)
    r.receive("n1", late, at(10))
    [frame] = closed(r.receive("n1", fs[0], at(5)))
    assert frame.fan is True  # index 1 was received last by network time
    assert frame.ambient == 22  # the latest fragment that had a reading


def test_restore_rebuilds_open_frames_exactly() -> None:
    r = Reassembler()
    persisted = []
    for e in feed(r, "n1", frags(18, number=1)[:7]) + feed(r, "n2", frags(19)[:3], 3):
        assert isinstance(e, FragmentAccepted)
        persisted.append((e.device_id, e.fragment, e.received_at, e.opened_at))
    restored = Reassembler.restore(persisted)
    assert restored.open_frames() == r.open_frames()
    rest = feed(restored, "n1", frags(18, number=1)[7:], 50)
    [frame] = closed(rest)
    assert frame.complete and frame.opened_at == at(0)
    assert frame.grid == expected_grid(18, Mode.SLOW)


def test_restore_closes_a_complete_group_on_the_next_expire() -> None:
    entries = [("n1", f, at(i), at(0)) for i, f in enumerate(frags(20, Mode.FAST))]
    r = Reassembler.restore(entries)
    assert r.open_frames() == []
    [event] = r.expire(at(10))
    assert isinstance(event, FrameCompleted) and event.frame.complete


def test_resync_takes_the_fragments_another_writer_stored() -> None:
    # Two bridges on one database: each saw a different half of n1's frame. After resync from
    # the stored fragments, the last fragment completes the whole frame, not half of it.
    ours, theirs = Reassembler(), Reassembler()
    stored = []
    fragments = frags(21, number=4)
    for i, f in enumerate(fragments[:-1]):
        writer = ours if i % 2 else theirs
        for e in writer.receive("n1", f, at(i)):
            assert isinstance(e, FragmentAccepted)
            stored.append((e.device_id, e.fragment, e.received_at, at(0)))
    feed(ours, "n2", frags(22)[:5], 100)  # another device: left alone
    n2_before = [f for f in ours.open_frames() if f.device_id == "n2"]

    ours.resync("n1", stored)

    assert [f for f in ours.open_frames() if f.device_id == "n2"] == n2_before
    [frame] = closed(ours.receive("n1", fragments[-1], at(30)))
    assert frame.complete and frame.grid == expected_grid(21, Mode.SLOW)


def test_resync_without_stored_fragments_forgets_a_frame_another_writer_closed() -> None:
    r = Reassembler()
    feed(r, "n1", frags(23, number=2)[:10])
    r.resync("n1", [])
    assert r.open_frames() == []
    assert r.expire(at(10_000)) == [], "no stale partial frame is left to time out"


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([Mode.SLOW, Mode.FAST]),  # compressed: test_reassembly_compressed.py
    st.integers(0, 1000),
    st.randoms(use_true_random=False),
    st.lists(st.integers(0, 23), max_size=10),
)
def test_any_order_with_duplicates_gives_the_original_grid(mode, seed, rng, dups) -> None:  # type: ignore[no-untyped-def]
    fs = frags(seed, mode, seed % 64)
    order = fs + [fs[i % len(fs)] for i in dups]
    rng.shuffle(order)
    r = Reassembler()
    events = feed(r, "n1", order)
    frames = closed(events)
    assert len(frames) == 1 and frames[0].complete
    assert frames[0].grid == expected_grid(seed, mode)
    duplicates = [e for e in events if isinstance(e, DuplicateFragment)]
    assert len(duplicates) == len(dups)
    assert r.open_frames() == []


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1000), st.sets(st.integers(0, 23), min_size=1, max_size=23), st.randoms())
def test_any_subset_gives_exactly_the_received_rows(seed, subset, rng) -> None:  # type: ignore[no-untyped-def]
    fs = frags(seed, Mode.SLOW, 3)
    chosen = [fs[i] for i in subset]
    rng.shuffle(chosen)
    r = Reassembler(frame_timeout_s=60)
    feed(r, "n1", chosen)
    [event] = r.expire(at(1000))
    assert isinstance(event, FramePartial)
    frame = event.frame
    assert frame.received == tuple(sorted(subset))
    assert frame.coverage == len(subset) / 24
    full = expected_grid(seed, Mode.SLOW)
    for row in range(24):
        assert frame.grid[row] == (full[row] if row in subset else (None,) * 32)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=40))
def test_nothing_accepted_is_lost(plan) -> None:  # type: ignore[no-untyped-def]
    """Every accepted fragment ends up in exactly one closed frame after expiry."""
    r = Reassembler(frame_timeout_s=3600)
    frames = {n: frags(n, Mode.FAST, n) for n in range(4)}
    accepted = 0
    out: list[Event] = []
    for i, (device, n) in enumerate(plan):
        f = frames[n][i % 2]
        events = r.receive(f"d{device}", f, at(i))
        accepted += sum(isinstance(e, FragmentAccepted | FrameUpdated) for e in events)
        out += events
    out += r.expire(at(10_000))
    final: dict[tuple[str, datetime], Frame] = {}
    for frame in closed(out):
        final[(frame.device_id, frame.opened_at)] = frame
    assert sum(len(f.received) for f in final.values()) == accepted
    assert r.open_frames() == []
