"""Fragments in, frames out: PROTOCOL.md's reassembly rules as a pure state machine.

No I/O and no clock: every call is given the network time (`received_at`) or `now`. The bridge
persists each accepted fragment and rebuilds the state with `Reassembler.restore` after a
restart, so open frames survive it.

Rules (PROTOCOL.md "Reassembly rules"), and how the ambiguous cases are settled:

- A frame is open under (device, mode, frame number); fragments join it in any order.
- The same fragment twice (same index, same content) is a duplicate and is ignored. The same
  index with *different* content under an open frame's number means the node wrapped its 6-bit
  frame number while the old frame was still open: the old frame is closed as partial and the
  fragment opens a new frame. Thermal rows of two different frames are never bit-identical in
  practice, so content is a safe tie-breaker where arrival time is not.
- A frame is complete when every index of its mode arrived; a compressed frame (docs/protocol.md)
  when the pixel ranges of its fragments cover 0..767, and its coverage is pixels ÷ 768. When a frame completes or is closed,
  every frame of the same device opened before it and still open is closed as partial
  ("superseded"). A frame with no new fragment for `frame_timeout_s` is closed ("timeout").
- A fragment that arrives late for a partial frame closed recently (among the device's last
  `late_memory` closed frames, within the timeout of its last fragment) is added to it and the
  frame is announced again as `FrameUpdated`: nothing that arrived is thrown away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from node_firmware.protocol import (
    FRAME_PIXELS,
    LOSSLESS_STEP_C,
    Fragment,
    Grid,
    Mode,
    fragment_count,
    grid_shape,
    rows_per_fragment,
)

DEFAULT_FRAME_TIMEOUT_S = 1800.0
DEFAULT_LATE_MEMORY = 4

PartialReason = Literal["superseded", "timeout"]


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame as reassembled so far (or finally)."""

    device_id: str
    mode: Mode
    frame_number: int
    opened_at: datetime
    complete: bool
    received: tuple[int, ...]
    grid: Grid
    first_received_at: datetime
    last_received_at: datetime
    fan: bool
    ambient: int | None
    pixels_received: int = 0  # compressed mode: pixels its fragments carried
    # Quantisation step in °C: the protocol's 0.1 for slow and fast; for compressed frames the
    # coarsest step of its fragments (docs/protocol.md), so values are within step / 2.
    step: float = LOSSLESS_STEP_C

    @property
    def coverage(self) -> float:
        """Fragments received ÷ fragments expected (compressed: pixels received ÷ 768)."""
        if self.mode is Mode.COMPRESSED:
            return self.pixels_received / FRAME_PIXELS
        return len(self.received) / fragment_count(self.mode)


@dataclass(frozen=True, slots=True)
class FragmentAccepted:
    """A fragment joined an open frame: persist it (it belongs to the frame `opened_at`)."""

    device_id: str
    fragment: Fragment
    received_at: datetime
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class DuplicateFragment:
    """A fragment that had already arrived; nothing changed."""

    device_id: str
    mode: Mode
    frame_number: int
    index: int


@dataclass(frozen=True, slots=True)
class FrameCompleted:
    """Every fragment of a frame arrived."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class FramePartial:
    """An incomplete frame was closed (a newer frame closed, or it timed out)."""

    frame: Frame
    reason: PartialReason


@dataclass(frozen=True, slots=True)
class FrameUpdated:
    """A late fragment reached a recently closed frame; same identity, store it again."""

    frame: Frame


Event = FragmentAccepted | DuplicateFragment | FrameCompleted | FramePartial | FrameUpdated

RestoreEntry = tuple[str, Fragment, datetime, datetime]
"""(device_id, fragment, received_at, opened_at) of a persisted fragment."""


def _device_of(event: Event) -> str:
    """The device an event is about."""
    if isinstance(event, FragmentAccepted | DuplicateFragment):
        return event.device_id
    return event.frame.device_id


@dataclass(slots=True)
class _Assembly:
    """The mutable state of one frame."""

    device_id: str
    mode: Mode
    frame_number: int
    opened_at: datetime
    fragments: dict[int, tuple[Fragment, datetime]] = field(default_factory=dict)

    def add(self, fragment: Fragment, received_at: datetime) -> None:
        self.fragments[fragment.index] = (fragment, received_at)

    @property
    def complete(self) -> bool:
        if self.mode is Mode.COMPRESSED:
            return self.pixels_received() == FRAME_PIXELS
        return len(self.fragments) == fragment_count(self.mode)

    def pixels_received(self) -> int:
        """Distinct pixels the fragments carry (compressed mode)."""
        covered: set[int] = set()
        for fragment, _ in self.fragments.values():
            covered.update(fragment.pixel_range())
        return len(covered)

    @property
    def last_received_at(self) -> datetime:
        return max(at for _, at in self.fragments.values())

    def matches(self, fragment: Fragment) -> bool:
        return self.mode == fragment.mode and self.frame_number == fragment.frame_number

    def snapshot(self) -> Frame:
        rows, cols = grid_shape(self.mode)
        per = rows_per_fragment(self.mode)
        grid: list[tuple[float | None, ...]] = [(None,) * cols for _ in range(rows)]
        if self.mode is Mode.COMPRESSED:
            flat: list[float | None] = [None] * (rows * cols)
            for fragment, _ in self.fragments.values():
                start = fragment.start
                flat[start : start + len(fragment.pixels)] = fragment.pixels
            grid = [tuple(flat[r * cols : (r + 1) * cols]) for r in range(rows)]
        else:
            for index, (fragment, _) in self.fragments.items():
                for r in range(per):
                    grid[index * per + r] = tuple(fragment.pixels[r * cols : (r + 1) * cols])
        # Latest by network time; among equal times the one that arrived last wins.
        by_time = sorted(self.fragments.values(), key=lambda item: item[1])
        ambient = None
        for fragment, _ in by_time:
            if fragment.ambient is not None:
                ambient = fragment.ambient
        times = [at for _, at in by_time]
        return Frame(
            device_id=self.device_id,
            mode=self.mode,
            frame_number=self.frame_number,
            opened_at=self.opened_at,
            complete=self.complete,
            received=tuple(sorted(self.fragments)),
            grid=tuple(grid),
            first_received_at=times[0],
            last_received_at=times[-1],
            fan=by_time[-1][0].fan,
            ambient=ambient,
            pixels_received=self.pixels_received() if self.mode is Mode.COMPRESSED else 0,
            step=(
                max(fragment.step for fragment, _ in by_time)
                if self.mode is Mode.COMPRESSED
                else LOSSLESS_STEP_C
            ),
        )


class Reassembler:
    """Open frames of every device, fed one fragment at a time."""

    def __init__(
        self,
        frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        late_memory: int = DEFAULT_LATE_MEMORY,
    ) -> None:
        if frame_timeout_s <= 0:
            raise ValueError(f"frame_timeout_s must be positive, not {frame_timeout_s}")
        self.frame_timeout_s = frame_timeout_s
        self.late_memory = late_memory
        self._open: dict[str, list[_Assembly]] = {}  # per device, in the order they opened
        self._closed: dict[str, deque[_Assembly]] = {}  # recently closed frames
        self._pending: list[Event] = []  # closures found by restore, handed out by expire

    # --- queries -------------------------------------------------------------------------

    def open_frames(self) -> list[Frame]:
        """Snapshots of every open frame, per device in opening order."""
        return [a.snapshot() for frames in self._open.values() for a in frames]

    def open_frames_of(self, device_id: str) -> list[Frame]:
        """Snapshots of one device's open frames (what the alarm engine sees still arriving)."""
        return [a.snapshot() for a in self._open.get(device_id, ())]

    def is_open(self, device_id: str, mode: Mode, frame_number: int) -> bool:
        """True while a frame of that identity is open."""
        return any(
            a.mode == mode and a.frame_number == frame_number for a in self._open.get(device_id, ())
        )

    # --- input ---------------------------------------------------------------------------

    def receive(self, device_id: str, fragment: Fragment, received_at: datetime) -> list[Event]:
        """Take one decoded fragment; returns what happened, in order."""
        events: list[Event] = []
        frames = self._open.setdefault(device_id, [])
        target = next((a for a in frames if a.matches(fragment)), None)
        if target is not None:
            known = target.fragments.get(fragment.index)
            if known is None:
                target.add(fragment, received_at)
                events.append(FragmentAccepted(device_id, fragment, received_at, target.opened_at))
                if target.complete:
                    events += self._close(target, None)
                return events
            if known[0] == fragment:
                return [self._duplicate(device_id, fragment)]
            # The frame number wrapped while the old frame was open: close it, start anew.
            events += self._close(target, "superseded")
        else:
            late = self._late_target(device_id, fragment, received_at)
            if late is not None:
                known = late.fragments.get(fragment.index)
                if known is None:
                    late.add(fragment, received_at)
                    return [FrameUpdated(late.snapshot())]
                if known[0] == fragment:
                    return [self._duplicate(device_id, fragment)]
        opened = _Assembly(device_id, fragment.mode, fragment.frame_number, received_at)
        opened.add(fragment, received_at)
        self._open.setdefault(device_id, []).append(opened)
        events.append(FragmentAccepted(device_id, fragment, received_at, received_at))
        if opened.complete:
            events += self._close(opened, None)
        return events

    def expire(self, now: datetime) -> list[Event]:
        """Close frames without a new fragment for the timeout; forget old closed frames."""
        events, self._pending = self._pending, []
        for device_id in list(self._open):
            for assembly in list(self._open.get(device_id, ())):
                if assembly in self._open.get(device_id, ()) and self._timed_out(assembly, now):
                    events += self._close(assembly, "timeout")
            if not self._open.get(device_id):
                self._open.pop(device_id, None)
        for device_id, closed in list(self._closed.items()):
            kept = [a for a in closed if not self._timed_out(a, now)]
            if kept:
                self._closed[device_id] = deque(kept, maxlen=self.late_memory)
            else:
                del self._closed[device_id]
        return events

    @classmethod
    def restore(
        cls,
        entries: Iterable[RestoreEntry],
        *,
        frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        late_memory: int = DEFAULT_LATE_MEMORY,
    ) -> Reassembler:
        """Rebuild the open frames from persisted fragments (in arrival order).

        A frame found complete is closed at once; its event comes out of the next `expire`.
        """
        reassembler = cls(frame_timeout_s, late_memory)
        reassembler._load(entries)
        return reassembler

    def resync(self, device_id: str, entries: Iterable[RestoreEntry]) -> None:
        """Replace one device's open frames with those rebuilt from its persisted fragments.

        For a second writer (another bridge on the same database): the stored fragments are
        the truth, so a frame the other writer opened, extended or closed is seen as it is.
        Other devices and the memory of recently closed frames are kept.
        """
        self._open.pop(device_id, None)
        self._pending = [e for e in self._pending if _device_of(e) != device_id]
        self._load(entry for entry in entries if entry[0] == device_id)

    def _load(self, entries: Iterable[RestoreEntry]) -> None:
        """Group persisted fragments into open frames; close the complete ones (pending)."""
        groups: dict[tuple[str, Mode, int, datetime], _Assembly] = {}
        for device_id, fragment, received_at, opened_at in entries:
            key = (device_id, fragment.mode, fragment.frame_number, opened_at)
            assembly = groups.get(key)
            if assembly is None:
                assembly = _Assembly(device_id, fragment.mode, fragment.frame_number, opened_at)
                groups[key] = assembly
            if fragment.index not in assembly.fragments:
                assembly.add(fragment, received_at)
        for assembly in sorted(groups.values(), key=lambda a: a.opened_at):
            self._open.setdefault(assembly.device_id, []).append(assembly)
        for assembly in list(groups.values()):
            if assembly.complete and assembly in self._open[assembly.device_id]:
                self._pending += self._close(assembly, None)

    # --- internals -----------------------------------------------------------------------

    def _duplicate(self, device_id: str, fragment: Fragment) -> DuplicateFragment:
        return DuplicateFragment(device_id, fragment.mode, fragment.frame_number, fragment.index)

    def _timed_out(self, assembly: _Assembly, now: datetime) -> bool:
        return (now - assembly.last_received_at).total_seconds() >= self.frame_timeout_s

    def _late_target(
        self, device_id: str, fragment: Fragment, received_at: datetime
    ) -> _Assembly | None:
        for assembly in reversed(self._closed.get(device_id, ())):
            if assembly.matches(fragment):
                age = abs((received_at - assembly.last_received_at).total_seconds())
                return assembly if age < self.frame_timeout_s else None
        return None

    def _close(self, assembly: _Assembly, reason: PartialReason | None) -> list[Event]:
        """Close a frame and, before it, the older open frames of its device it supersedes."""
        frames = self._open[assembly.device_id]
        position = frames.index(assembly)
        older, rest = frames[:position], frames[position + 1 :]
        self._open[assembly.device_id] = rest
        events: list[Event] = []
        for old in older:
            events.append(FramePartial(old.snapshot(), "superseded"))
            self._remember(old)
        snapshot = assembly.snapshot()
        if reason is None and snapshot.complete:
            events.append(FrameCompleted(snapshot))
        else:
            events.append(FramePartial(snapshot, reason or "superseded"))
        self._remember(assembly)
        return events

    def _remember(self, assembly: _Assembly) -> None:
        memory = self._closed.setdefault(assembly.device_id, deque(maxlen=self.late_memory))
        memory.append(assembly)
