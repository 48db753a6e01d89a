"""`cloud-engine effector [--zone ID ...]`: an effector as its own process."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

from bus.process import run_until_signalled
from effectors.service import EffectorService, effector_config
from engine.settings import Settings, SettingsError
from runner.components import ensure_event_store, start_infrastructure

COMMANDS = ("effector",)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "effector",
        help="carry out work on the hypervisors of some zones (needs CLOUD_ENGINE_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="ZONE_ID",
        help="serve this zone (repeatable); all zones when not given",
    )


def zones_of(values: list[str]) -> frozenset[uuid.UUID] | None:
    try:
        zones = frozenset(uuid.UUID(v) for v in values)
    except ValueError:
        raise SettingsError(f"--zone needs zone ids (UUIDs), got {values}") from None
    return zones or None


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "CLOUD_ENGINE_KAFKA_BOOTSTRAP: the effector needs a broker (host:port); "
            "`cloud-engine up` runs one for development"
        )
    zones = zones_of(args.zone)
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        effector = EffectorService(
            infra.target,
            effector_config(infra.bootstrap, settings.topic_prefix, zones),
            zones=zones,
        )
        asyncio.run(run_until_signalled(effector.run))
    finally:
        infra.stop()
    return 0
