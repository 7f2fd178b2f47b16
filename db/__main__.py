"""`python -m db upgrade`: create or upgrade the configured database to the current schema;
`python -m db prune`: keep the hourly summaries and prune what is past retention (db/retention.py),
as the bridge does by itself once a day."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bridge import config as config_mod
from db.migrations import CURRENT_VERSION, upgrade
from db.store import make_engine


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m db`."""
    parser = argparse.ArgumentParser(prog="python -m db", description=__doc__)
    parser.add_argument("command", choices=["upgrade", "version", "prune"])
    parser.add_argument("--config", default=os.environ.get("THERMAL_CONFIG"))
    parser.add_argument("--credentials", default=os.environ.get("THERMAL_CREDENTIALS"))
    parser.add_argument("--url", help="SQLAlchemy URL (overrides the configuration)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config, args.credentials)
    except config_mod.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(args.url or cfg.db_url())
    if args.command == "version":
        from db.migrations import current_version

        with engine.connect() as conn:
            print(current_version(conn))
        return 0
    version = upgrade(engine)
    print(f"database at schema version {version} (current {CURRENT_VERSION})")
    if args.command == "prune":
        from db.retention import RetentionPolicy, run

        policy = RetentionPolicy(
            cfg.frames_retention_days, cfg.uplink_retention_days, cfg.summaries_retention_days
        )
        report = run(engine, policy)
        if report.skipped:
            print(f"nothing done: {report.skipped}")
            return 1
        print(
            f"summarised {report.hours_summarised} device-hours; pruned {report.frames_pruned}"
            f" frames, {report.ambient_pruned} ambient readings, {report.uplinks_pruned} uplinks,"
            f" {report.summaries_pruned} summaries in {report.seconds:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
