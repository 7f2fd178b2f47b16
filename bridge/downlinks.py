"""Settings downlinks: requested, published through TTN, followed until the node applies them.

Used by the webapp (a user's request) and the bridge (TTN's events, the node's status uplinks,
publishing the outbox). The database is the outbox: a request is committed first and published
after, so a request survives a restart of either process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bridge import announcements as ann
from bridge.config import Config
from bridge.ttn import DownlinkEvent, build_downlink_replace, format_time
from db.store import FINAL_STATUSES, DeviceRecord, DownlinkRecord, Store, Tx
from node_firmware.protocol import (
    SETTINGS_PORT,
    STEPS_C,
    STEPS_TENTHS,
    Mode,
    NodeStatus,
    ProtocolError,
    Settings,
    decode_settings,
    encode_settings,
    step_tenths,
)
from webapp.settings import DEFAULT_SETTINGS, SettingsChange, merge_settings

log = logging.getLogger(__name__)

# A status may only move forward; TTN's events can arrive after the node already confirmed.
STATUS_RANK = {"queued": 0, "sent": 1, "nacked": 1, "acked": 2, "applied": 3}

Publish = Callable[[str, bytes], None]


class RateLimited(Exception):
    """Too many settings downlinks for one device within a day (TTN fair use); a new one may
    be requested from `retry_at` on."""

    def __init__(self, message: str, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at


@dataclass(frozen=True, slots=True)
class SettingsOutcome:
    """What a settings request led to."""

    status: str  # "queued" or "unchanged"
    settings: Settings
    downlink: DownlinkRecord | None


def desired_settings(device: DeviceRecord, seen_mode: str | None = None) -> Settings:
    """The settings the user wants now: requested, else reported by the node, else (for the
    mode) the mode its latest frame came in, else defaults.

    `seen_mode` matters when the node's status uplink was lost: without it a request for the
    fan alone would also switch a fast-mode node to the default slow mode.
    """
    fan = device.desired_fan if device.desired_fan is not None else device.reported_fan
    mode = device.desired_mode or device.reported_mode or seen_mode
    threshold = (
        device.desired_threshold
        if device.desired_threshold is not None
        else device.reported_threshold
    )
    tenths = device.desired_step if device.desired_mode else device.reported_step
    return Settings(
        fan=DEFAULT_SETTINGS.fan if fan is None else fan,
        mode=Mode.from_label(mode) if mode else DEFAULT_SETTINGS.mode,
        threshold=DEFAULT_SETTINGS.threshold if threshold is None else threshold,
        step=step_of_tenths(tenths),
    )


def step_of_tenths(tenths: int | None) -> float:
    """A stored step (°C/10) as the protocol's step; unknown or null: lossless 0.1."""
    return STEPS_C[STEPS_TENTHS.index(tenths)] if tenths in STEPS_TENTHS else STEPS_C[0]


def _settings_of(record: DownlinkRecord) -> Settings:
    try:
        return decode_settings(record.payload)  # carries compressed mode's step too
    except ProtocolError:
        return Settings(record.fan, Mode.from_label(record.mode), record.threshold)


class Downlinks:
    """Creates downlink requests and moves them through their statuses."""

    def __init__(self, config: Config, store: Store, announce: ann.Announce) -> None:
        self.config = config
        self.store = store
        self.announce = announce

    def request(self, device_id: str, change: SettingsChange, now: datetime) -> SettingsOutcome:
        """Queue a settings downlink for a known device (the caller checked it exists)."""
        superseded: list[DownlinkRecord] = []
        with self.store.transaction() as tx:
            device = tx.device_for_update(device_id, now)
            seen_mode = None if device.reported_mode else tx.latest_frame_mode(device_id)
            current = desired_settings(device, seen_mode)
            wanted = merge_settings(current, change)
            if wanted == current:
                return SettingsOutcome("unchanged", current, None)
            # Only what reached the node counts: the pending requests this one replaces were
            # never sent (down/replace takes them out of TTN's queue).
            limit = self.config.settings_per_day
            sent = tx.transmitted_downlink_times(device_id, now - timedelta(days=1))
            if len(sent) >= limit:
                retry_at = sent[len(sent) - limit] + timedelta(days=1)
                raise RateLimited(
                    f"{device_id} was already sent {len(sent)} settings downlinks in the last "
                    f"24 hours, the limit (The Things Network's fair-use policy allows about 10 "
                    f"downlinks a day); try again after {format_time(retry_at)}",
                    retry_at,
                )
            for old in tx.pending_downlinks(device_id):
                tx.set_downlink_status(
                    old.downlink_id, "superseded", now, "replaced by a newer request"
                )
                superseded.append(old)
            payload = encode_settings(wanted)
            correlation_id = f"thermal:downlink:{uuid.uuid4().hex}"
            downlink_id = tx.create_downlink(
                {
                    "device_id": device_id,
                    "correlation_id": correlation_id,
                    "fan": wanted.fan,
                    "mode": Mode(wanted.mode).label,
                    "threshold": wanted.threshold,
                    "f_port": SETTINGS_PORT,
                    "payload": payload,
                    "status": "queued",
                    "message": "waiting for The Things Stack to queue it",
                    "requested_at": now,
                    "updated_at": now,
                }
            )
            tx.update_device(
                device_id,
                desired_fan=wanted.fan,
                desired_mode=Mode(wanted.mode).label,
                desired_threshold=wanted.threshold,
                desired_step=step_tenths(wanted.step) if wanted.mode is Mode.COMPRESSED else None,
            )
            device = tx.device_for_update(device_id, now)
        record = self.store.downlink(downlink_id)
        assert record is not None
        for old in superseded:
            self.announce("downlink", ann.downlink(old, "superseded", now), device_id)
        self.announce("downlink", ann.downlink(record), device_id)
        self.announce("node_state", ann.node_state(device, record), device_id)
        return SettingsOutcome("queued", wanted, record)

    def publish_outbox(self, publish: Publish) -> int:
        """Hand every unpublished pending downlink to the broker; returns how many."""
        count = 0
        for record in self.store.unpublished_downlinks():
            body = build_downlink_replace(
                self.config.mqtt.app_id,
                record.device_id,
                record.f_port,
                record.payload,
                record.correlation_id,
            )
            publish(self.config.mqtt.topic_downlink(record.device_id), body)
            with self.store.transaction() as tx:
                tx.mark_published(record.downlink_id, datetime.now(UTC))
            log.info(
                "downlink %d to %s published (%s)",
                record.downlink_id,
                record.device_id,
                record.payload.hex(),
            )
            count += 1
        return count

    def apply_event(self, tx: Tx, event: DownlinkEvent) -> list[tuple[str, dict, str]]:
        """Record a TTN downlink event on its request; returns the announcements to make."""
        record = tx.downlink_by_correlation(event.device_id, event.correlation_ids)
        if record is None and event.f_port is not None and event.payload is not None:
            record = tx.downlink_by_payload(event.device_id, event.f_port, event.payload)
        if record is None:
            log.info(
                "downlink %s event for %s matches no request (sent from elsewhere?)",
                event.status,
                event.device_id,
            )
            return []
        if tx.has_history(record.downlink_id, event.status, event.at):
            # The same event again (a redelivery, a second bridge, a backfill): applied once.
            log.debug("downlink %s event for %s again; ignored", event.status, event.device_id)
            return []
        message = event.message or {
            "queued": "queued by The Things Stack",
            "sent": "sent to the node",
            "acked": "the node acknowledged it",
            "failed": "The Things Stack gave up",
        }.get(event.status)
        if record.status in FINAL_STATUSES or STATUS_RANK.get(event.status, 9) < STATUS_RANK.get(
            record.status, 0
        ):
            # Too late to move the status (e.g. the ack after the node already applied it):
            # keep it in the history only.
            tx.add_history(record.downlink_id, event.status, event.at, message)
            return []
        tx.set_downlink_status(record.downlink_id, event.status, event.at, message)
        updated = tx.downlink_by_correlation(record.device_id, [record.correlation_id])
        assert updated is not None
        return [("downlink", ann.downlink(updated, event.status, event.at), event.device_id)]

    def apply_status(
        self, tx: Tx, device_id: str, status: NodeStatus, at: datetime
    ) -> list[tuple[str, dict, str]]:
        """A status uplink that matches a pending request marks it applied."""
        reported = Settings(status.fan_requested, status.mode, status.threshold, status.step)
        out: list[tuple[str, dict, str]] = []
        for record in tx.pending_downlinks(device_id):
            if _settings_of(record) == reported:
                tx.set_downlink_status(
                    record.downlink_id, "applied", at, "the node reported the new settings"
                )
                updated = tx.downlink_by_correlation(record.device_id, [record.correlation_id])
                assert updated is not None
                out.append(("downlink", ann.downlink(updated, "applied", at), device_id))
        return out
