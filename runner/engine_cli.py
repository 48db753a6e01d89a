"""`cloud-engine engine`: the engine's consumers as their own process — the
operation manager (plans, places, advances and compensates operations) and
the recorder of effector results. Run several: Kafka's consumer groups share
the partitions, and every step is idempotent against the log."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings, SettingsError
from cloud_engine.orchestration.manager import OperationManager, manager_config
from cloud_engine.orchestration.recorder import ResultRecorder
from cloud_engine.runner.components import (
    command_service,
    ensure_event_store,
    start_infrastructure,
)

COMMANDS = ("engine",)


def register(sub: Any) -> None:
    sub.add_parser(
        "engine",
        help="drive operations and record effector results (needs CLOUD_ENGINE_KAFKA_BOOTSTRAP)",
    )


def engine_components(
    service: CommandService, store: EventStore, settings: Settings, target: Any, bootstrap: str
) -> list[Any]:
    """The engine's long-running parts, each with run(stop)."""
    manager = OperationManager(
        service,
        store,
        target,
        manager_config(bootstrap, settings.topic_prefix),
        sweep_interval_s=settings.operation_sweep_s,
        step_deadline_s=settings.operation_step_deadline_s,
    )
    recorder = ResultRecorder(service, bootstrap, settings.topic_prefix)
    return [manager, recorder]


def run(_: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "CLOUD_ENGINE_KAFKA_BOOTSTRAP: the engine needs a broker (host:port); "
            "`cloud-engine up` runs one for development"
        )
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        with command_service(infra.target, settings) as (service, store):
            parts = engine_components(service, store, settings, infra.target, infra.bootstrap)

            async def components(stop: asyncio.Event) -> None:
                await asyncio.gather(*(p.run(stop) for p in parts))

            run_component(components, settings.event_loop)
    finally:
        infra.stop()
    return 0
