"""The database schema (SQLAlchemy Core), the same on MySQL/MariaDB and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# MySQL's BIGINT autoincrement; SQLite only autoincrements INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")
# A frame's PNG (<= 80 KB) needs MEDIUMBLOB on MySQL (BLOB stops at 64 KB).
Blob = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC out; stored naive UTC with microseconds."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to UTCDateTime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime),
    Column("last_f_cnt", BigInteger),
    Column("online", Boolean, nullable=False, default=False),
    # Desired settings: what the user asked for last (null until the first request or status).
    Column("desired_fan", Boolean),
    Column("desired_mode", String(16)),
    Column("desired_threshold", SmallInteger),
    # Compressed mode's step in °C/10 (docs/protocol.md), null for slow and fast. Version 2.
    Column("desired_step", SmallInteger),
    # Reported: what the node said (status uplink, fragment fan bit).
    Column("fan_running", Boolean),
    Column("reported_fan", Boolean),
    Column("reported_mode", String(16)),
    Column("reported_threshold", SmallInteger),
    Column("reported_step", SmallInteger),
    Column("protocol_version", SmallInteger),
    Column("uplinks", BigInteger, nullable=False, default=0),
    Column("lost_uplinks", BigInteger, nullable=False, default=0),
    Column("invalid_uplinks", BigInteger, nullable=False, default=0),
    # Alarms (version 5): per-device rule overrides (JSON object, null = the configured rules)
    # and the alarm engine's state (bridge/alarms.py, JSON), both read under the row's lock.
    Column("alarm_rules", Text),
    Column("alarm_state", Text),
)

uplinks = Table(
    "uplinks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uplink_key", String(160), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("f_cnt", BigInteger, nullable=False),
    Column("f_port", SmallInteger, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("rssi", Float),
    Column("snr", Float),
    Column("gateway_id", String(64)),
    Column("data_rate", String(16)),
    Column("payload", LargeBinary(255), nullable=False),
    Column("error", String(255)),
    UniqueConstraint("uplink_key", name="uq_uplinks_key"),
    Index("ix_uplinks_device_time", "device_id", "received_at"),
    Index("ix_uplinks_time", "received_at"),
)

open_fragments = Table(
    "open_fragments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("frame_number", SmallInteger, nullable=False),
    Column("fragment_index", SmallInteger, nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("payload", LargeBinary(255), nullable=False),
    UniqueConstraint(
        "device_id", "mode", "frame_number", "opened_at", "fragment_index", name="uq_open_fragment"
    ),
)

frames = Table(
    "frames",
    metadata,
    Column("frame_id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    # "slow", "fast" or "compressed" (String(8) until schema version 2).
    Column("mode", String(16), nullable=False),
    Column("frame_number", SmallInteger, nullable=False),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("complete", Boolean, nullable=False),
    Column("coverage", Float, nullable=False),
    # Quantisation step in °C/10 (1 for slow and fast; compressed: 1, 2, 5 or 10). Version 3.
    Column("step", SmallInteger),
    Column("received_mask", BigInteger, nullable=False),
    Column("first_received_at", UTCDateTime, nullable=False),
    Column("last_received_at", UTCDateTime, nullable=False),
    Column("temp_min", Float),
    Column("temp_max", Float),
    Column("temp_mean", Float),
    Column("ambient", Float),
    Column("fan", Boolean, nullable=False),
    Column("grid_rows", SmallInteger, nullable=False),
    Column("grid_cols", SmallInteger, nullable=False),
    # Big-endian int16 per pixel in °C/10, -2048 = no data: 1536 bytes for 24 x 32.
    Column("grid", LargeBinary(4096), nullable=False),
    Column("png", Blob, nullable=False),
    UniqueConstraint("device_id", "mode", "frame_number", "opened_at", name="uq_frame_identity"),
    Index("ix_frames_device_time", "device_id", "first_received_at"),
    Index("ix_frames_time_max", "first_received_at", "temp_max"),
)

ambient = Table(
    "ambient",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("temperature", Float, nullable=False),
    UniqueConstraint("device_id", "at", name="uq_ambient_device_at"),
)

downlinks = Table(
    "downlinks",
    metadata,
    Column("downlink_id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("correlation_id", String(100), nullable=False),
    Column("fan", Boolean, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("threshold", SmallInteger, nullable=False),
    Column("f_port", SmallInteger, nullable=False),
    Column("payload", LargeBinary(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", String(255)),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("published_at", UTCDateTime),
    UniqueConstraint("correlation_id", name="uq_downlinks_correlation"),
    Index("ix_downlinks_device_time", "device_id", "requested_at"),
    Index("ix_downlinks_status", "status"),
)

downlink_history = Table(
    "downlink_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "downlink_id",
        Id,
        ForeignKey("downlinks.downlink_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("status", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("message", String(255)),
    Index("ix_downlink_history_downlink", "downlink_id"),
)

alarms = Table(
    "alarms",
    metadata,
    Column("alarm_id", Id, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("value", Float),
    Column("limit_value", Float),
    Column("opened_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),  # "cleared_at" in REST and events
    Column("detail", Text),
    # Version 5: severity, acknowledgement, and `active_kind`: the kind while the alarm is
    # active, NULL once cleared. Its unique key with device_id lets the database itself refuse
    # a second active alarm of a kind for a device (NULLs never collide).
    Column("severity", String(16)),
    Column("active_kind", String(32)),
    Column("acked_at", UTCDateTime),
    Column("acked_by", String(64)),
    Column("note", String(500)),
    UniqueConstraint("device_id", "active_kind", name="uq_alarms_active"),
    Index("ix_alarms_device_kind_active", "device_id", "kind", "active"),
    Index("ix_alarms_active", "active"),
)

# One row per device and hour with frames, kept after the frames are pruned (retention.frames_days)
# for retention.summaries_days: db/retention.py. Version 10.
frame_summaries = Table(
    "frame_summaries",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),  # the hour's start, UTC
    Column("frames", Integer, nullable=False),
    Column("temp_max_min", Float),
    Column("temp_max_max", Float),
    Column("temp_max_mean", Float),
    Column("ambient_min", Float),
    Column("ambient_max", Float),
    Column("ambient_mean", Float),
    Index("ix_frame_summaries_hour", "hour"),
)
