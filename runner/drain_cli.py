"""`cloud-engine drain`: the drainer (automation/drain.py) as its own
process: it moves the VMs of hosts put in maintenance away through engine
commands. Run several if you like: they derive the same migration ids, so
nothing is asked twice. `up` runs one."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cloud_engine.automation.drain import Drainer
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings
from cloud_engine.runner.components import (
    command_service,
    ensure_event_store,
    start_infrastructure,
)

COMMANDS = ("drain",)


def register(sub: Any) -> None:
    sub.add_parser("drain", help="move the VMs of hosts in maintenance away (the drainer)")


def run(_: argparse.Namespace, settings: Settings) -> int:
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        with command_service(infra.target, settings) as (service, store):
            drainer = Drainer(service, store, infra.target)

            async def component(stop: asyncio.Event) -> None:
                await drainer.run(stop)

            run_component(component, settings.event_loop)
    finally:
        infra.stop()
    return 0
