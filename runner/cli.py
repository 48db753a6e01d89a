"""The `cloud-engine` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog
from eventsourcing.persistence import PersistenceError

from cloud_engine.bus.broker import BrokerError
from cloud_engine.bus.relay import Relay
from cloud_engine.client import console
from cloud_engine.client import main as client
from cloud_engine.engine.errors import DomainError
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings, SettingsError, load_settings
from cloud_engine.lab import LabError
from cloud_engine.runner import (
    api_cli,
    audit_cli,
    automation_cli,
    drain_cli,
    effector_cli,
    engine_cli,
    lab_cli,
    projections_cli,
    token_cli,
)
from cloud_engine.runner.components import ensure_event_store, relay_config, start_infrastructure
from cloud_engine.runner.up import up

log = structlog.get_logger("runner.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-engine",
        description="Event-sourced orchestration engine for private clouds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = sub.add_parser(
        "up",
        help="run everything on embedded defaults (database, broker, relay, projections,"
        " engine, effector) with a demo fabric",
    )
    up.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")
    up.add_argument(
        "--hypervisor",
        dest="up_hypervisor",
        choices=("auto", "lab", "test"),
        help="demo hosts on lab hosts (real QEMU on this machine), libvirt's test driver,"
        " or auto: the lab where it can run (CLOUD_ENGINE_UP_HYPERVISOR)",
    )
    up.add_argument(
        "--hosts",
        dest="up_hosts",
        type=int,
        help="how many demo hosts (CLOUD_ENGINE_UP_HOSTS; default 3 lab hosts, 2 test-driver"
        " hosts; a data directory keeps those it has)",
    )
    sub.add_parser(
        "relay",
        help="publish stored events to Kafka (needs CLOUD_ENGINE_KAFKA_BOOTSTRAP)",
    )
    audit_cli.register(sub)
    projections_cli.register(sub)
    effector_cli.register(sub)
    engine_cli.register(sub)
    drain_cli.register(sub)
    automation_cli.register(sub)
    api_cli.register(sub)
    token_cli.register(sub)
    lab_cli.register(sub)
    client.register_help(sub)
    return parser


def relay(settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "CLOUD_ENGINE_KAFKA_BOOTSTRAP: the relay needs a broker (host:port); "
            "`cloud-engine up` runs one for development"
        )
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        component = Relay(infra.target, relay_config(settings, infra.bootstrap))
        run_component(component.run, settings.event_loop)
    finally:
        infra.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["console"]:  # a VM's serial console (client/console.py)
        return console.main(argv[1:])
    if client.handles(argv):  # the client commands: HTTP only (client/)
        return client.main(argv)
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        settings = load_settings(
            data_dir=getattr(args, "data_dir", None),
            up_hypervisor=getattr(args, "up_hypervisor", None),
            up_hosts=getattr(args, "up_hosts", None),
        )
        configure_logging(settings.log_format, settings.log_level)
        if args.command == "up":
            return up(settings)
        if args.command == "relay":
            return relay(settings)
        if args.command in audit_cli.COMMANDS:
            return audit_cli.run(args, settings)
        if args.command in ("replay", "projections"):
            return projections_cli.run(args, settings)
        if args.command in effector_cli.COMMANDS:
            return effector_cli.run(args, settings)
        if args.command in engine_cli.COMMANDS:
            return engine_cli.run(args, settings)
        if args.command in drain_cli.COMMANDS:
            return drain_cli.run(args, settings)
        if args.command in automation_cli.COMMANDS:
            return automation_cli.run(args, settings)
        if args.command in api_cli.COMMANDS:
            return api_cli.run(args, settings)
        if args.command in token_cli.COMMANDS:
            return token_cli.run(args, settings)
        if args.command in lab_cli.COMMANDS:
            return lab_cli.run(args, settings)
    except SettingsError as e:
        print(f"cloud-engine: configuration error: {e}", file=sys.stderr)
        return 2
    except DomainError as e:
        print(f"cloud-engine: refused: {e}", file=sys.stderr)
        return 1
    except PersistenceError as e:
        print(f"cloud-engine: database error: {e}", file=sys.stderr)
        return 1
    except BrokerError as e:
        print(f"cloud-engine: broker error: {e}", file=sys.stderr)
        return 1
    except LabError as e:
        print(f"cloud-engine: lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
