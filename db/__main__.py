"""`python -m db upgrade`: create or upgrade the configured database to the current schema."""

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
    parser.add_argument("command", choices=["upgrade", "version"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
