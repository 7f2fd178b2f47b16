"""Alarm rules (DESIGN.md "Alarm rules", second release) as a pure engine.

No I/O and no clock: a device's alarm state, its rules and what happened (frame summaries, an
uplink, a silence) go in; the new state and the alarm transitions (`opened`, `escalated`,
`deescalated`, `cleared`) come out. The bridge persists the state with the device (one JSON
column, read and written under the device's row lock), so restarts and a second bridge on the
same database continue from exactly where the first left off.

How frames are judged (and where DESIGN.md is silent, what Prometheus and ThingsBoard do):

- Frames are judged **in capture order** (their first fragment's network time), each once, when
  it is *settled*: complete, or closed as partial. A settled frame that is newer than a frame
  still arriving waits for it. A frame older than the last judged one (a late fragment of an
  older frame, issue 20) is stored by the bridge but never judged: it cannot clear or reopen
  the alarm of a newer frame.
- over_threshold also opens **early**, on the pixels received so far of frames still arriving
  (DESIGN.md: "complete, or still arriving"), and escalates early to critical the same way. It
  opens after `open_after_frames` consecutive frames above the threshold (Prometheus's `for`,
  counted in frames) and clears only after `clear_after_frames` consecutive complete frames at or
  below threshold − `hysteresis_c` (Prometheus's `keep_firing_for`, ThingsBoard's clear
  condition with a duration). A complete frame inside the band resets that count; a partial frame
  at or below the threshold neither counts nor resets (it proves nothing either way).
- A drop back to warning (de-escalation) is judged on complete frames only, and only while the
  hottest pixel is still above the threshold: a frame at or below it is on the way to clearing,
  and the alarm keeps its severity until it clears (as Prometheus keeps an alert firing as it
  was during `keep_firing_for`).
- non_uniform and rate_of_rise are judged on complete frames only; offline on uplinks and
  silences.
- One alarm per device and kind is active at a time: a kind is either active (with a severity)
  or not, and `opened` is only ever emitted for an inactive kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Literal

KINDS = ("over_threshold", "non_uniform", "rate_of_rise", "offline")
FRAME_KINDS = ("over_threshold", "non_uniform", "rate_of_rise")
SEVERITIES = ("warning", "critical")
Severity = Literal["warning", "critical"]
Change = Literal["opened", "escalated", "deescalated", "cleared"]

HISTORY_MAX = 256  # complete frames kept for rate_of_rise (within rise_window_s)


class AlarmRuleError(ValueError):
    """A rule key or value that is not allowed; the message names it and the allowed range."""


@dataclass(frozen=True, slots=True)
class AlarmRules:
    """The rules of DESIGN.md "Alarm rules", with its defaults."""

    open_after_frames: int = 1
    clear_after_frames: int = 2
    hysteresis_c: float = 2.0
    critical_margin_c: float = 10.0
    non_uniform_spread_c: float = 10.0
    rise_c: float = 5.0
    rise_window_s: float = 600.0


# key -> (integer?, minimum, maximum)
RULE_RANGES: dict[str, tuple[bool, float, float]] = {
    "open_after_frames": (True, 1, 100),
    "clear_after_frames": (True, 1, 100),
    "hysteresis_c": (False, 0.0, 50.0),
    "critical_margin_c": (False, 0.0, 100.0),
    "non_uniform_spread_c": (False, 0.1, 200.0),
    "rise_c": (False, 0.1, 100.0),
    "rise_window_s": (False, 1.0, 86400.0),
}


def rule_value(key: str, value: object) -> int | float:
    """A rule's value checked against its range; AlarmRuleError names the key otherwise."""
    if key not in RULE_RANGES:
        raise AlarmRuleError(f"unknown alarm rule {key!r}; allowed: {', '.join(RULE_RANGES)}")
    integer, low, high = RULE_RANGES[key]
    kind = "an integer" if integer else "a number"
    allowed = f"{key} must be {kind} from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AlarmRuleError(f"{allowed}, not {value!r}"[:200])
    if integer and (isinstance(value, float) and not value.is_integer()):
        raise AlarmRuleError(f"{allowed}, not {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise AlarmRuleError(f"{allowed}, not {value!r}"[:200])
    return int(value) if integer else float(value)


def rules_with(base: AlarmRules, overrides: Mapping[str, object]) -> AlarmRules:
    """`base` with each override applied (validated); a None override keeps the base value."""
    changes = {k: rule_value(k, v) for k, v in overrides.items() if v is not None}
    return replace(base, **changes)  # type: ignore[arg-type]


def merge_overrides(current: Mapping[str, object], update: Mapping[str, object]) -> dict[str, Any]:
    """A device's overrides after a PUT: keys set, `null` removes the override (default again)."""
    merged: dict[str, Any] = dict(current)
    for key, value in update.items():
        if key not in RULE_RANGES:
            raise AlarmRuleError(f"unknown alarm rule {key!r}; allowed: {', '.join(RULE_RANGES)}")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = rule_value(key, value)
    return merged


def rules_dict(rules: AlarmRules) -> dict[str, int | float]:
    """The rules as JSON-ready values."""
    return {f.name: getattr(rules, f.name) for f in fields(rules)}


# --- inputs and outputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameSummary:
    """What the engine needs of a frame: identity, capture order, settledness, hottest/coldest."""

    key: str  # stable identity (mode, frame number, opening) of the frame
    started_at: datetime  # network time of its earliest fragment: the capture order
    at: datetime  # network time of its latest fragment: when a judgement of it happens
    settled: bool  # complete, or closed as partial: it will not change (except late updates)
    complete: bool
    temp_max: float | None  # of the pixels received so far; None = no pixel yet
    temp_min: float | None


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of one alarm of a device."""

    kind: str
    change: Change
    severity: Severity
    value: float | None
    limit: float | None
    at: datetime


@dataclass(frozen=True, slots=True)
class KindState:
    """One kind's state: active or not, and its runs of frames."""

    severity: Severity | None = None  # None = no active alarm of this kind
    hot_run: int = 0  # consecutive judged frames meeting the opening condition
    cool_run: int = 0  # consecutive complete frames meeting the clearing condition

    @property
    def active(self) -> bool:
        return self.severity is not None


@dataclass(frozen=True, slots=True)
class AlarmState:
    """A device's alarm state, kept between messages (persisted as JSON)."""

    kinds: Mapping[str, KindState] = field(default_factory=dict)
    judged_until: datetime | None = None  # started_at of the newest judged frame
    waiting: tuple[FrameSummary, ...] = ()  # settled frames behind an older one still arriving
    history: tuple[tuple[datetime, float], ...] = ()  # (started_at, temp_max) of complete frames

    def kind(self, kind: str) -> KindState:
        """The state of one kind (inactive and empty when never seen)."""
        return self.kinds.get(kind) or KindState()

    def active(self) -> dict[str, Severity]:
        """The active kinds and their severities."""
        return {k: s.severity for k, s in self.kinds.items() if s.severity is not None}


# --- the engine ---------------------------------------------------------------------------


class _Run:
    """A mutable working copy of a state during one evaluation."""

    def __init__(self, state: AlarmState) -> None:
        self.kinds = dict(state.kinds)
        self.judged_until = state.judged_until
        self.history = list(state.history)
        self.out: list[Transition] = []

    def get(self, kind: str) -> KindState:
        return self.kinds.get(kind) or KindState()

    def set(self, kind: str, state: KindState) -> None:
        self.kinds[kind] = state

    def emit(
        self,
        kind: str,
        change: Change,
        severity: Severity,
        value: float | None,
        limit: float | None,
        at: datetime,
    ) -> None:
        self.out.append(Transition(kind, change, severity, value, limit, at))

    def state(self, waiting: Iterable[FrameSummary]) -> AlarmState:
        kinds = {k: s for k, s in self.kinds.items() if s != KindState()}
        return AlarmState(kinds, self.judged_until, tuple(waiting), tuple(self.history))


def _severity(temp_max: float, threshold: float, rules: AlarmRules) -> Severity:
    return "critical" if temp_max > threshold + rules.critical_margin_c else "warning"


def evaluate_frames(
    state: AlarmState, rules: AlarmRules, threshold: float, frames: Sequence[FrameSummary]
) -> tuple[AlarmState, list[Transition]]:
    """Judge what a message changed about a device's frames.

    `frames` holds the frames that settled in this message and every frame of the device still
    arriving (its pixels so far). Settled frames are judged in capture order once no older frame
    is still arriving; frames older than the newest judged one are ignored.
    """
    run = _Run(state)
    newer = [f for f in frames if run.judged_until is None or f.started_at > run.judged_until]
    by_key: dict[str, FrameSummary] = {f.key: f for f in state.waiting}
    for frame in newer:
        by_key[frame.key] = frame
    queue = sorted(by_key.values(), key=lambda f: (f.started_at, f.key))
    while queue and queue[0].settled:
        _judge(run, rules, threshold, queue.pop(0))
    _early(run, rules, threshold, queue)
    return run.state(f for f in queue if f.settled), run.out


def _judge(run: _Run, rules: AlarmRules, threshold: float, frame: FrameSummary) -> None:
    """One settled frame, in capture order."""
    run.judged_until = frame.started_at
    if frame.temp_max is None or frame.temp_min is None:
        return
    _judge_over_threshold(run, rules, threshold, frame)
    if frame.complete:
        _judge_non_uniform(run, rules, frame)
        _judge_rate_of_rise(run, rules, frame)


def _judge_over_threshold(
    run: _Run, rules: AlarmRules, threshold: float, frame: FrameSummary
) -> None:
    kind = "over_threshold"
    assert frame.temp_max is not None
    hottest = frame.temp_max
    s = run.get(kind)
    if hottest > threshold:
        s = replace(s, hot_run=s.hot_run + 1, cool_run=0)
        severity = _severity(hottest, threshold, rules)
        if s.severity is None and s.hot_run >= rules.open_after_frames:
            s = replace(s, severity=severity)
            run.emit(kind, "opened", severity, hottest, threshold, frame.at)
        elif s.severity == "warning" and severity == "critical":
            s = replace(s, severity=severity)
            run.emit(kind, "escalated", severity, hottest, threshold, frame.at)
        elif s.severity == "critical" and severity == "warning" and frame.complete:
            s = replace(s, severity=severity)
            run.emit(kind, "deescalated", severity, hottest, threshold, frame.at)
    elif not frame.complete:
        pass  # a partial frame at or below the threshold proves nothing either way
    elif hottest <= threshold - rules.hysteresis_c:
        s = replace(s, hot_run=0, cool_run=s.cool_run + 1)
        if s.severity is not None and s.cool_run >= rules.clear_after_frames:
            run.emit(kind, "cleared", s.severity, hottest, threshold, frame.at)
            s = replace(s, severity=None, cool_run=0)
    else:  # inside the hysteresis band: the clearing count starts again
        s = replace(s, hot_run=0, cool_run=0)
    run.set(kind, s)


def _judge_spread_like(
    run: _Run,
    rules: AlarmRules,
    kind: str,
    firing: bool,
    quiet: bool,
    severity: Severity,
    value: float,
    limit: float,
    at: datetime,
) -> None:
    """Open after `open_after_frames` firing frames, clear after `clear_after_frames` quiet
    ones; a frame neither firing nor quiet (inside the band) resets both counts."""
    s = run.get(kind)
    if firing:
        s = replace(s, hot_run=s.hot_run + 1, cool_run=0)
        if s.severity is None and s.hot_run >= rules.open_after_frames:
            s = replace(s, severity=severity)
            run.emit(kind, "opened", severity, value, limit, at)
    elif quiet:
        s = replace(s, hot_run=0, cool_run=s.cool_run + 1)
        if s.severity is not None and s.cool_run >= rules.clear_after_frames:
            run.emit(kind, "cleared", s.severity, value, limit, at)
            s = replace(s, severity=None, cool_run=0)
    else:
        s = replace(s, hot_run=0, cool_run=0)
    run.set(kind, s)


def _judge_non_uniform(run: _Run, rules: AlarmRules, frame: FrameSummary) -> None:
    assert frame.temp_max is not None and frame.temp_min is not None
    spread = round(frame.temp_max - frame.temp_min, 1)
    limit = rules.non_uniform_spread_c
    _judge_spread_like(
        run,
        rules,
        "non_uniform",
        spread > limit,
        spread <= limit - rules.hysteresis_c,
        "warning",
        spread,
        limit,
        frame.at,
    )


def _judge_rate_of_rise(run: _Run, rules: AlarmRules, frame: FrameSummary) -> None:
    assert frame.temp_max is not None
    window = [
        (at, t)
        for at, t in run.history
        if 0 <= (frame.started_at - at).total_seconds() <= rules.rise_window_s
    ]
    rise = round(frame.temp_max - min((t for _, t in window), default=frame.temp_max), 1)
    run.history = [*window, (frame.started_at, frame.temp_max)][-HISTORY_MAX:]
    _judge_spread_like(
        run,
        rules,
        "rate_of_rise",
        rise > rules.rise_c,
        rise <= rules.rise_c,
        "critical",
        rise,
        rules.rise_c,
        frame.at,
    )


def _early(run: _Run, rules: AlarmRules, threshold: float, pending: list[FrameSummary]) -> None:
    """over_threshold on frames not judged yet (still arriving, or waiting behind one): open
    after enough consecutive hot frames, escalate on a pixel above the critical margin.

    A frame not above the threshold so far restarts the count as a cool complete frame would
    (a partial one, settled, is skipped as when judged): with `open_after_frames` 1, any hot
    pixel opens at once, even while an older frame still waits for a lost fragment."""
    kind = "over_threshold"
    s = run.get(kind)
    hot_run = s.hot_run
    for frame in pending:
        if frame.temp_max is None or frame.temp_max <= threshold:
            if not frame.settled or frame.complete:
                hot_run = 0
            continue
        hot_run += 1
        severity = _severity(frame.temp_max, threshold, rules)
        if s.severity is None and hot_run >= rules.open_after_frames:
            s = replace(s, severity=severity)
            run.emit(kind, "opened", severity, frame.temp_max, threshold, frame.at)
        elif s.severity == "warning" and severity == "critical":
            s = replace(s, severity=severity)
            run.emit(kind, "escalated", severity, frame.temp_max, threshold, frame.at)
    run.set(kind, s)


def evaluate_uplink(state: AlarmState, at: datetime) -> tuple[AlarmState, list[Transition]]:
    """An uplink arrived: an offline alarm clears."""
    s = state.kind("offline")
    if s.severity is None:
        return state, []
    kinds = {**state.kinds, "offline": KindState()}
    return replace(state, kinds=kinds), [
        Transition("offline", "cleared", s.severity, None, None, at)
    ]


def evaluate_silence(
    state: AlarmState, at: datetime, silent_s: float, offline_after_s: float
) -> tuple[AlarmState, list[Transition]]:
    """No uplink for `silent_s`: an offline alarm opens once it passes `offline_after_s`."""
    s = state.kind("offline")
    if s.severity is not None or silent_s < offline_after_s:
        return state, []
    kinds = {**state.kinds, "offline": KindState(severity="warning")}
    return replace(state, kinds=kinds), [
        Transition("offline", "opened", "warning", silent_s, offline_after_s, at)
    ]


# --- persistence (JSON in the device's row) ------------------------------------------------


def state_to_json(state: AlarmState) -> str:
    """The state as compact JSON."""
    return json.dumps(
        {
            "kinds": {
                k: [s.severity, s.hot_run, s.cool_run] for k, s in sorted(state.kinds.items())
            },
            "judged_until": state.judged_until.isoformat() if state.judged_until else None,
            "waiting": [_summary_json(f) for f in state.waiting],
            "history": [[at.isoformat(), t] for at, t in state.history],
        },
        separators=(",", ":"),
    )


def state_from_json(text: str | None, active: Mapping[str, Severity] | None = None) -> AlarmState:
    """The state stored as JSON; without one (a database from before the engine), the state
    rebuilt from the device's active alarms (kind -> severity)."""
    if not text:
        kinds = {k: KindState(severity=s) for k, s in (active or {}).items() if k in KINDS}
        return AlarmState(kinds)
    data = json.loads(text)
    kinds = {
        k: KindState(severity=v[0], hot_run=int(v[1]), cool_run=int(v[2]))
        for k, v in data.get("kinds", {}).items()
        if k in KINDS
    }
    if active is not None:  # the alarms table has the last word on what is active
        for k in KINDS:
            s = kinds.get(k, KindState())
            if s.severity != active.get(k):
                kinds[k] = replace(s, severity=active.get(k))
    judged = data.get("judged_until")
    return AlarmState(
        kinds,
        datetime.fromisoformat(judged) if judged else None,
        tuple(_summary_from_json(f) for f in data.get("waiting", [])),
        tuple((datetime.fromisoformat(at), float(t)) for at, t in data.get("history", [])),
    )


def _summary_json(f: FrameSummary) -> list[Any]:
    return [
        f.key,
        f.started_at.isoformat(),
        f.at.isoformat(),
        f.settled,
        f.complete,
        f.temp_max,
        f.temp_min,
    ]


def _summary_from_json(v: Sequence[Any]) -> FrameSummary:
    return FrameSummary(
        str(v[0]),
        datetime.fromisoformat(v[1]),
        datetime.fromisoformat(v[2]),
        bool(v[3]),
        bool(v[4]),
        v[5],
        v[6],
    )
