"""The bridge: TTN messages in; frames, readings, states and downlink progress stored and pushed.

`Bridge.handle_message(body)` is what the MQTT adapter calls for every message. It returns once
everything the message caused is committed (then the adapter acknowledges it to the broker), or
raises StorageUnavailable (then the adapter keeps the message and retries). Bad input is counted,
logged once and skipped: it never raises.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError

from bridge import announcements as ann
from bridge import renderings
from bridge.alarms import (
    AlarmRuleError,
    AlarmRules,
    AlarmState,
    FrameSummary,
    Transition,
    evaluate_frames,
    evaluate_silence,
    evaluate_uplink,
    rules_with,
    state_from_json,
    state_to_json,
)
from bridge.backfill import Backfiller
from bridge.config import Config
from bridge.downlinks import Downlinks, Publish
from bridge.metrics import LatencyHistogram
from bridge.reassembly import (
    DuplicateFragment,
    Event,
    FragmentAccepted,
    Frame,
    FrameCompleted,
    FramePartial,
    FrameUpdated,
    Reassembler,
    RestoreEntry,
)
from bridge.ttn import (
    DownlinkEvent,
    IgnoredMessage,
    TTNMessageError,
    Uplink,
    format_time,
    parse_message,
)
from db.gridpack import pack_grid
from db.retention import RetentionPolicy, RetentionSchedule
from db.store import (
    UPLINK_KEY_CHARS,
    DeviceRecord,
    StorageUnavailable,
    Store,
    StoredFragment,
    Tx,
    frame_record,
)
from imaging.heatmap import grid_stats
from node_firmware.protocol import (
    Fragment,
    Mode,
    NodeStatus,
    ProtocolError,
    decode_fragment,
    decode_uplink,
    encode_fragment,
    step_tenths,
)

log = logging.getLogger(__name__)

AMBIENT_MIN_INTERVAL_S = 60.0  # store an unchanged ambient reading at most once a minute
PAYLOAD_LOG_BYTES = 24  # bad payloads are logged truncated
INTEGRITY_RETRIES = 3

Announcement = tuple[str, dict[str, Any], str]


@dataclass
class _AmbientSeen:
    temperature: int
    at: datetime


def _truncate(data: bytes | str) -> str:
    text = data[:200].decode("utf-8", "replace") if isinstance(data, bytes) else data[:200]
    return text + ("…" if len(data) > 200 else "")


class Bridge:
    """Stores and announces what the nodes send; follows downlinks."""

    def __init__(
        self,
        config: Config,
        store: Store,
        announce: ann.Announce,
        publish: Publish | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.announce = announce
        self.publish = publish
        self.downlinks = Downlinks(config, store, announce)
        self.metrics: Counter[str] = Counter()
        self.ingest_latency = LatencyHistogram()  # received_at -> committed (bridge/metrics.py)
        self._reassembler: Reassembler | None = None
        # Per device, its uplink count as this process last wrote it. A different count under
        # the device's row lock means another writer (a second bridge started by mistake) has
        # stored uplinks since: the open frames are then re-read from the database.
        self._known_uplinks: dict[str, int] = {}
        self._ambient: dict[str, _AmbientSeen] = {}
        self._lock = threading.RLock()
        self.retention = RetentionSchedule(
            store.engine,
            RetentionPolicy(
                config.frames_retention_days,
                config.uplink_retention_days,
                config.summaries_retention_days,
            ),
        )
        self.backfiller: Backfiller | None = None

    # --- start-up -------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild the open frames from the fragments persisted in the database."""
        entries = _restore_entries(self.store.open_fragments())
        self._known_uplinks.clear()
        self._reassembler = Reassembler.restore(
            entries, frame_timeout_s=self.config.frame_timeout_s
        )
        self._ambient.clear()
        if entries:
            log.info(
                "resumed %d open frame(s) from %d stored fragment(s)",
                len(self._reassembler.open_frames()),
                len(entries),
            )

    @property
    def reassembler(self) -> Reassembler:
        """The reassembly state, restored from storage on first use and after a failure."""
        if self._reassembler is None:
            self.restore()
        assert self._reassembler is not None
        return self._reassembler

    # --- messages -------------------------------------------------------------------------

    def handle_message(self, body: bytes) -> None:
        """Process one MQTT message body. Raises StorageUnavailable only."""
        message = self._parse(body)
        if message is not None:
            self._handle_parsed(message)

    def handle_messages(self, bodies: Sequence[bytes]) -> None:
        """Process several MQTT message bodies, in order, in one database transaction, and
        announce their changes once it has committed. Raises StorageUnavailable only.

        Under load this is what the MQTT adapter calls with the messages already waiting: one
        commit instead of one per uplink. If the batch hits a conflict (a second writer) or a
        bug, it is rolled back as a whole and its messages are handled one by one.
        """
        messages = [m for m in map(self._parse, bodies) if m is not None]
        if len(messages) <= 1:
            for message in messages:
                self._handle_parsed(message)
            return
        announcements: list[Announcement] = []
        first_seen: dict[str, datetime] = {}
        for message in messages:
            if isinstance(message, Uplink):
                first_seen.setdefault(message.device_id, message.received_at)
        try:
            with self._lock, self._counted_if_committed(), self.store.batch() as tx:
                tx.prefetch([m.uplink_id for m in messages if isinstance(m, Uplink)], first_seen)
                for message in messages:
                    announcements += self._apply(message)
        except StorageUnavailable:
            self._reassembler = None  # the database is the truth: rebuild after the outage
            raise
        except Exception as exc:
            self._reassembler = None  # rolled back: in-memory state must follow
            log.info("a batch of %d messages was rolled back (%s); one by one", len(messages), exc)
            for message in messages:
                try:
                    self._handle_parsed(message)
                except StorageUnavailable:
                    raise
                except Exception:
                    self.metrics["failed_messages"] += 1
                    log.exception("unexpected error on a message of %s; skipped", message.device_id)
            return
        self.metrics["batches"] += 1
        self._committed(messages)
        for event, payload, device_id in announcements:
            self.announce(event, payload, device_id)

    @contextmanager
    def _counted_if_committed(self) -> Iterator[None]:
        """Keep what is counted in the metrics inside only if no exception escapes: a
        transaction that rolls back is redone (one by one, or by the adapter after an outage)
        and counts its uplinks and frames again then. Call it holding self._lock."""
        before = self.metrics.copy()
        try:
            yield
        except BaseException:
            self.metrics.clear()
            self.metrics.update(before)
            raise

    def _committed(self, messages: Sequence[Uplink | DownlinkEvent]) -> None:
        """Observe received_at -> now for the uplinks of a transaction that just committed."""
        now = datetime.now(UTC)
        for message in messages:
            if isinstance(message, Uplink):
                self.ingest_latency.observe((now - message.received_at).total_seconds())

    def metrics_snapshot(self) -> tuple[dict[str, int], LatencyHistogram]:
        """The counters as of the last commit (not mid-transaction: under the lock) and the
        ingest latency histogram, for the metrics collectors."""
        with self._lock:
            return dict(self.metrics), self.ingest_latency

    def _parse(self, body: bytes) -> Uplink | DownlinkEvent | None:
        """The message of a body, or None (counted and logged) if it is unusable or ignored."""
        try:
            message = parse_message(body)
        except TTNMessageError as exc:
            self.metrics["invalid_messages"] += 1
            log.warning(
                "skipping a message that is not a usable TTN message: %s; body %r",
                exc,
                _truncate(body),
            )
            return None
        if isinstance(message, IgnoredMessage):
            self.metrics["ignored_messages"] += 1
            log.debug("ignoring %s message of %s", message.kind, message.device_id)
            return None
        return message

    def _handle_parsed(self, message: Uplink | DownlinkEvent) -> None:
        for attempt in range(INTEGRITY_RETRIES):
            try:
                with self._lock, self._counted_if_committed():
                    announcements = self._apply(message)
                break
            except StorageUnavailable:
                self._reassembler = None  # the database is the truth: rebuild after the outage
                raise
            except IntegrityError:
                # Another writer (a second bridge) stored the same thing a moment ago.
                self._reassembler = None
                log.info("concurrent write detected; retrying (%d)", attempt + 1)
        else:
            self.metrics["failed_messages"] += 1
            log.error("giving up on a message after %d conflicts", INTEGRITY_RETRIES)
            return
        self._committed((message,))
        for event, payload, device_id in announcements:
            self.announce(event, payload, device_id)

    def _apply(self, message: Uplink | DownlinkEvent) -> list[Announcement]:
        if isinstance(message, DownlinkEvent):
            self.metrics["downlink_events"] += 1
            with self.store.transaction() as tx:
                return self.downlinks.apply_event(tx, message)
        return self._apply_uplink(message)

    def _apply_uplink(self, up: Uplink) -> list[Announcement]:
        decoded: Fragment | NodeStatus | None = None
        error: str | None = None
        try:
            decoded = decode_uplink(up.f_port, up.payload)
        except ProtocolError as exc:
            error = str(exc)
        out: list[Announcement] = []
        reassembler = self.reassembler
        try:
            with self.store.transaction() as tx:
                duplicate = tx.uplink_seen(up.uplink_id)
                device = tx.device_for_update(up.device_id, up.received_at)
                device_uplinks = device.uplinks
                if self._known_uplinks.get(up.device_id) != device_uplinks:
                    entries = _restore_entries(tx.open_fragments_of(up.device_id))
                    reassembler.resync(up.device_id, entries)
                changes: dict[str, Any] = {}
                if not duplicate:
                    self._log_uplink(tx, up, error)
                    changes.update(self._count_uplink(device, up, error))
                if isinstance(decoded, Fragment):
                    out += self._apply_fragment(tx, device, up, decoded, duplicate, changes)
                elif isinstance(decoded, NodeStatus) and not duplicate:
                    out += self._apply_status(tx, up, decoded, changes)
                if changes.get("online"):
                    back = tx.device_for_update(up.device_id, up.received_at)
                    out += self._run_alarm_engine(tx, back, partial(_heard, at=up.received_at))
                if changes:
                    tx.update_device(up.device_id, **changes)
                    if _state_changed(changes):
                        # Re-read only for the announcement (most uplinks change counters only).
                        device = tx.device_for_update(up.device_id, up.received_at)
                        pending = tx.pending_downlinks(up.device_id)
                        out.append(
                            (
                                "node_state",
                                ann.node_state(device, pending[-1] if pending else None),
                                up.device_id,
                            )
                        )
        except BaseException:
            if reassembler is self._reassembler:
                self._reassembler = None
            self._known_uplinks.pop(up.device_id, None)
            raise
        self._known_uplinks[up.device_id] = changes.get("uplinks", device_uplinks)
        if duplicate:
            self.metrics["duplicate_uplinks"] += 1
        else:
            self.metrics["uplinks"] += 1
        if error is not None and not duplicate:
            self.metrics["invalid_payloads"] += 1
            log.warning(
                "invalid payload from %s f_cnt %d port %d: %s; payload %s",
                up.device_id,
                up.f_cnt,
                up.f_port,
                error,
                up.payload[:PAYLOAD_LOG_BYTES].hex(),
            )
        return out

    def _log_uplink(self, tx: Tx, up: Uplink, error: str | None) -> None:
        tx.record_uplink(
            {
                "uplink_key": up.uplink_id[:UPLINK_KEY_CHARS],
                "device_id": up.device_id,
                "f_cnt": up.f_cnt,
                "f_port": up.f_port,
                "received_at": up.received_at,
                "rssi": up.rssi,
                "snr": up.snr,
                "gateway_id": (up.gateway_id or None) and up.gateway_id[:64],
                "data_rate": up.data_rate,
                "payload": up.payload[:255],
                "error": error[:255] if error else None,
            }
        )

    def _count_uplink(self, device: DeviceRecord, up: Uplink, error: str | None) -> dict[str, Any]:
        changes: dict[str, Any] = {"uplinks": device.uplinks + 1}
        if error is not None:
            changes["invalid_uplinks"] = device.invalid_uplinks + 1
        if device.last_seen is None or up.received_at >= device.last_seen:
            last = device.last_f_cnt
            if last is not None and up.f_cnt > last + 1:
                # DESIGN.md: on a QoS 0 stream, an f_cnt jump means uplinks we never got.
                lost = up.f_cnt - last - 1
                changes["lost_uplinks"] = device.lost_uplinks + lost
                self.metrics["lost_uplinks"] += lost
                if self.backfiller is not None and device.last_seen is not None:
                    self.backfiller.request(device.last_seen, "f_cnt gap")
                log.warning(
                    "%s: f_cnt jumped %d -> %d: %d uplink(s) missing",
                    up.device_id,
                    last,
                    up.f_cnt,
                    lost,
                )
            changes["last_seen"] = up.received_at
            changes["last_f_cnt"] = up.f_cnt
        if not device.online:
            changes["online"] = True
        return changes

    def _apply_fragment(
        self,
        tx: Tx,
        device: DeviceRecord,
        up: Uplink,
        fragment: Fragment,
        duplicate: bool,
        changes: dict[str, Any],
    ) -> list[Announcement]:
        out: list[Announcement] = []
        if duplicate and not self._is_open(up.device_id, fragment):
            # A redelivered uplink of a frame already closed must not open a bogus new frame.
            self.metrics["duplicate_fragments"] += 1
            return out
        events = self.reassembler.receive(up.device_id, fragment, up.received_at)
        out += self._store_events(tx, device, events)
        out += self._evaluate_frame_alarms(tx, device, events)
        if not duplicate:
            if device.fan_running != fragment.fan and (
                device.last_seen is None or up.received_at >= device.last_seen
            ):
                changes["fan_running"] = fragment.fan
            if fragment.ambient is not None:
                out += self._store_ambient(tx, up.device_id, fragment.ambient, up.received_at)
        return out

    def _is_open(self, device_id: str, fragment: Fragment) -> bool:
        return self.reassembler.is_open(device_id, fragment.mode, fragment.frame_number)

    def _store_events(
        self, tx: Tx, device: DeviceRecord | None, events: list[Event]
    ) -> list[Announcement]:
        out: list[Announcement] = []
        for event in events:
            if isinstance(event, FragmentAccepted):
                f = event.fragment
                tx.add_open_fragment(
                    {
                        "device_id": event.device_id,
                        "mode": Mode(f.mode).label,
                        "frame_number": f.frame_number,
                        "fragment_index": f.index,
                        "opened_at": event.opened_at,
                        "received_at": event.received_at,
                        "payload": encode_fragment(f),
                    }
                )
            elif isinstance(event, DuplicateFragment):
                self.metrics["duplicate_fragments"] += 1
            elif isinstance(event, FrameCompleted | FramePartial | FrameUpdated):
                frame = event.frame
                if device is None or device.device_id != frame.device_id:
                    device = tx.device_for_update(frame.device_id, frame.last_received_at)
                first = not isinstance(event, FrameUpdated)  # else it was stored before
                out += self._store_frame(tx, device, frame, first)
        return out

    def _store_frame(
        self, tx: Tx, device: DeviceRecord, frame: Frame, first: bool = False
    ) -> list[Announcement]:
        stats = grid_stats(frame.grid)
        temp_min, temp_max, temp_mean = stats if stats else (None, None, None)
        rows = len(frame.grid)
        cols = len(frame.grid[0]) if rows else 0
        mask = 0
        for index in frame.received:
            mask |= 1 << index
        values = {
            "device_id": frame.device_id,
            "mode": Mode(frame.mode).label,
            "frame_number": frame.frame_number,
            "opened_at": frame.opened_at,
            "complete": frame.complete,
            "coverage": frame.coverage,
            "received_mask": mask,
            "first_received_at": frame.first_received_at,
            "last_received_at": frame.last_received_at,
            "temp_min": temp_min,
            "temp_max": temp_max,
            "temp_mean": temp_mean,
            "ambient": frame.ambient,
            "fan": frame.fan,
            "grid_rows": rows,
            "grid_cols": cols,
            "step": step_tenths(frame.step),
            "grid": pack_grid(frame.grid),
            "png": renderings.stored_png(self.config, frame.grid),  # small: stays in the row
        }
        frame_id, changed = tx.upsert_frame(values, first)
        tx.close_open_fragments(
            frame.device_id, Mode(frame.mode).label, frame.frame_number, frame.opened_at
        )
        if not changed:
            return []
        self.metrics["frames_complete" if frame.complete else "frames_partial"] += 1
        self.metrics[f"frames:{values['mode']}:{'true' if frame.complete else 'false'}"] += 1
        record = frame_record(frame_id, values)
        # The full heatmap only for a frame that is pushed (a re-store that changed nothing is not).
        png = renderings.full_png(
            self.config,
            frame.grid,
            renderings.caption(
                frame.device_id, frame.first_received_at, frame.complete, frame.coverage
            ),
        )
        return [("frame", ann.frame_event(record, png), frame.device_id)]

    def _evaluate_frame_alarms(
        self, tx: Tx, device: DeviceRecord | None, events: list[Event]
    ) -> list[Announcement]:
        """Give the alarm engine, per device, the frames these events settled and the frames
        still arriving (their pixels so far); apply what it decides."""
        settled: dict[str, list[FrameSummary]] = {}
        for event in events:
            if isinstance(event, FrameCompleted | FramePartial | FrameUpdated):
                settled.setdefault(event.frame.device_id, []).append(
                    _frame_summary(event.frame, settled=True)
                )
            elif isinstance(event, FragmentAccepted):
                settled.setdefault(event.device_id, [])
        out: list[Announcement] = []
        for device_id, frames in settled.items():
            arriving = self.reassembler.open_frames_of(device_id)
            frames += [_frame_summary(f, settled=False) for f in arriving]
            if not frames:
                continue
            if device is None or device.device_id != device_id:
                device = tx.device_for_update(device_id, frames[0].at)
            threshold = float(ann.effective_threshold(device))
            out += self._run_alarm_engine(
                tx,
                device,
                partial(evaluate_frames, threshold=threshold, frames=frames),
            )
        return out

    def _run_alarm_engine(
        self,
        tx: Tx,
        device: DeviceRecord,
        step: Callable[[AlarmState, AlarmRules], tuple[AlarmState, list[Transition]]],
    ) -> list[Announcement]:
        """One step of the engine on a device's state (kept in its row, read under its lock):
        the state is written back and each transition applied, in this transaction."""
        state = self._alarm_state(tx, device)
        new, transitions = step(state, self._alarm_rules(device))
        if new != state or device.alarm_state is None:
            tx.update_device(device.device_id, alarm_state=state_to_json(new))
        out: list[Announcement] = []
        for transition in transitions:
            out += self._apply_alarm_transition(tx, device.device_id, transition)
        return out

    def _alarm_state(self, tx: Tx, device: DeviceRecord) -> AlarmState:
        """The engine's state of a device; rebuilt from its active alarms when it has none (a
        database from before the engine) or it cannot be read."""
        if device.alarm_state:
            try:
                return state_from_json(device.alarm_state)
            except (ValueError, KeyError, TypeError, IndexError):
                log.exception("unreadable alarm state of %s; rebuilt", device.device_id)
        active = tx.active_alarms(device.device_id)
        return state_from_json(None, {k: a.severity for k, a in active.items()})  # type: ignore[misc]

    def _alarm_rules(self, device: DeviceRecord) -> AlarmRules:
        """The configured rules with the device's overrides (PUT /api/devices/<id>/alarm-rules)."""
        if not device.alarm_rules:
            return self.config.alarm_rules
        try:
            overrides = json.loads(device.alarm_rules)
            if isinstance(overrides, dict):
                return rules_with(self.config.alarm_rules, overrides)
        except (ValueError, AlarmRuleError):
            pass
        log.warning("ignoring unusable alarm rules of %s", device.device_id)
        return self.config.alarm_rules

    def _apply_alarm_transition(
        self, tx: Tx, device_id: str, transition: Transition
    ) -> list[Announcement]:
        """Write one alarm transition in the message's transaction; its announcement.

        The one place an alarm changes: a notification outbox (issue 14) is written here too,
        in the same transaction, so a transition and its notifications commit together.
        """
        t = transition
        current = tx.active_alarms(device_id).get(t.kind)
        if current is not None and t.change == "opened":
            # The database has it active already (a state rebuilt, another writer): the same
            # alarm, at most a new severity.
            if current.severity == t.severity:
                return []
            t = replace(t, change="escalated" if t.severity == "critical" else "deescalated")
        if t.change == "opened":
            record = tx.open_alarm(device_id, t.kind, t.severity, t.value, t.limit, t.at)
        elif current is None:
            log.info("no active %s alarm of %s to mark %s", t.kind, device_id, t.change)
            return []
        elif t.change == "cleared":
            record = tx.close_alarm(current, t.value, t.at)
        else:
            record = tx.change_alarm_severity(current, t.severity, t.value, t.at)
        log.log(
            logging.INFO if t.change == "cleared" else logging.WARNING,
            "alarm %s of %s %s (%s): %s (limit %s)",
            t.kind,
            device_id,
            t.change,
            t.severity,
            t.value,
            t.limit,
        )
        return [("alarm", ann.alarm(record, t.change), device_id)]

    def _store_ambient(
        self, tx: Tx, device_id: str, temperature: int, at: datetime
    ) -> list[Announcement]:
        seen = self._ambient.get(device_id)
        if (
            seen is not None
            and seen.temperature == temperature
            and (abs((at - seen.at).total_seconds()) < AMBIENT_MIN_INTERVAL_S)
        ):
            return []
        if seen is not None and at < seen.at:
            return []  # an old fragment arriving late: not the current reading
        self._ambient[device_id] = _AmbientSeen(temperature, at)
        if not tx.add_ambient(device_id, at, float(temperature)):
            return []
        return [
            (
                "ambient",
                {"device_id": device_id, "temperature": float(temperature), "at": format_time(at)},
                device_id,
            )
        ]

    def _apply_status(
        self, tx: Tx, up: Uplink, status: NodeStatus, changes: dict[str, Any]
    ) -> list[Announcement]:
        changes.update(
            reported_fan=status.fan_requested,
            fan_running=status.fan_running,
            reported_mode=Mode(status.mode).label,
            reported_threshold=status.threshold,
            reported_step=step_tenths(status.step) if status.mode is Mode.COMPRESSED else None,
            protocol_version=status.version,
        )
        out = self.downlinks.apply_status(tx, up.device_id, status, up.received_at)
        if status.ambient is not None:
            out += self._store_ambient(tx, up.device_id, status.ambient, up.received_at)
        return out

    def connected(self) -> None:
        """The MQTT session (re)started: what was published meanwhile may be missing."""
        if self.backfiller is None:
            return
        since = self.store.latest_uplink_at()
        if since is not None:
            self.backfiller.request(since, "reconnect")

    # --- periodic work --------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        """Close timed-out frames, mark silent nodes offline, publish queued downlinks."""
        now = now or datetime.now(UTC)
        out: list[Announcement] = []
        with self._lock:
            reassembler = self.reassembler
            events = reassembler.expire(now)
            if events:
                try:
                    with self.store.transaction() as tx:
                        out += self._store_events(tx, None, events)
                        out += self._evaluate_frame_alarms(tx, None, events)
                except BaseException:
                    self._reassembler = None
                    raise
            out += self._mark_offline(now)
        for event, payload, device_id in out:
            self.announce(event, payload, device_id)
        if self.publish is not None:
            self.downlinks.publish_outbox(self.publish)
        if self.backfiller is not None:
            self.backfiller.run_pending(now)
        self.retention.run_if_due()  # summaries and pruning, in a thread of their own

    def _mark_offline(self, now: datetime) -> list[Announcement]:
        cutoff = now - timedelta(seconds=self.config.offline_after_s)
        out: list[Announcement] = []
        for stale in self.store.devices_seen_before(cutoff):
            with self.store.transaction() as tx:
                device = tx.device_for_update(stale.device_id, now)
                if not device.online or device.last_seen is None or device.last_seen >= cutoff:
                    continue
                tx.update_device(device.device_id, online=False)
                device = tx.device_for_update(device.device_id, now)
                pending = tx.pending_downlinks(device.device_id)
                out.append(
                    (
                        "node_state",
                        ann.node_state(device, pending[-1] if pending else None),
                        device.device_id,
                    )
                )
                silent_s = (now - stale.last_seen).total_seconds() if stale.last_seen else 0.0
                limit_s = self.config.offline_after_s
                out += self._run_alarm_engine(
                    tx,
                    device,
                    partial(_silence, at=now, silent_s=silent_s, offline_after_s=limit_s),
                )
                log.warning("%s went offline (silent for %.0f s)", device.device_id, silent_s or 0)
        return out

    def publish_now(self) -> None:
        """Publish the downlink outbox at once (after a request in the same process)."""
        if self.publish is not None:
            try:
                self.downlinks.publish_outbox(self.publish)
            except StorageUnavailable:
                log.warning("database unavailable; the downlink will be published later")


def _restore_entries(stored: list[StoredFragment]) -> list[RestoreEntry]:
    """Persisted fragments as the reassembler's restore entries."""
    entries: list[RestoreEntry] = []
    for item in stored:
        try:
            fragment = decode_fragment(item.payload)
        except ProtocolError:  # cannot happen for what we stored; never block the bridge
            log.exception("skipping an unreadable stored fragment of %s", item.device_id)
            continue
        entries.append((item.device_id, fragment, item.received_at, item.opened_at))
    return entries


def _silence(
    state: AlarmState, _rules: AlarmRules, at: datetime, silent_s: float, offline_after_s: float
) -> tuple[AlarmState, list[Transition]]:
    return evaluate_silence(state, at, silent_s, offline_after_s)


def _heard(
    state: AlarmState, _rules: AlarmRules, at: datetime
) -> tuple[AlarmState, list[Transition]]:
    return evaluate_uplink(state, at)


def _frame_summary(frame: Frame, settled: bool) -> FrameSummary:
    """What the alarm engine needs of a frame (its pixels so far, when still arriving)."""
    stats = grid_stats(frame.grid)
    return FrameSummary(
        key=f"{Mode(frame.mode).label}/{frame.frame_number}/{frame.opened_at.isoformat()}",
        started_at=frame.first_received_at,
        at=frame.last_received_at,
        settled=settled,
        complete=frame.complete,
        temp_max=stats[1] if stats else None,
        temp_min=stats[0] if stats else None,
    )


def _state_changed(changes: dict[str, Any]) -> bool:
    keys = {
        "online",
        "fan_running",
        "reported_fan",
        "reported_mode",
        "reported_threshold",
        "reported_step",
    }
    return bool(keys & changes.keys())
