"""The `cloud-engine` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog
from eventsourcing.persistence import PersistenceError

from engine.database import resolve_database
from engine.demo import describe, ensure_demo_fabric
from engine.errors import DomainError
from engine.logs import configure_logging
from engine.service import CommandService
from engine.settings import Settings, SettingsError, load_settings
from engine.store import EventStore

log = structlog.get_logger("engine.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-engine",
        description="Event-sourced orchestration engine for private clouds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = sub.add_parser(
        "up", help="start on embedded defaults, create the demo fabric once and print it"
    )
    up.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")
    return parser


def up(settings: Settings) -> int:
    target, server = resolve_database(settings)
    log.info("event store ready", database=target.describe(), embedded=server is not None)
    store = EventStore(target, pool_size=settings.db_pool_size)
    service = CommandService(
        store,
        batch_max=settings.command_batch_max,
        max_retries=settings.command_max_retries,
        cache_size=settings.aggregate_cache_size,
    )
    try:
        fabric = ensure_demo_fabric(service)
        print(f"cloud-engine event store: {target.describe()}")
        if server is not None:
            print(f"embedded PostgreSQL data: {settings.pgdata}")
        print("demo fabric:")
        for line in describe(store, fabric):
            print(f"  {line}")
        print(f"events stored: {store.max_position()}")
    finally:
        service.close()
        store.close()
        if server is not None:
            server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        settings = load_settings(data_dir=getattr(args, "data_dir", None))
        configure_logging(settings.log_format, settings.log_level)
        if args.command == "up":
            return up(settings)
    except SettingsError as e:
        print(f"cloud-engine: configuration error: {e}", file=sys.stderr)
        return 2
    except DomainError as e:
        print(f"cloud-engine: refused: {e}", file=sys.stderr)
        return 1
    except PersistenceError as e:
        print(f"cloud-engine: database error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
