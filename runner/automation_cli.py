"""`cloud-engine automation`: liveness, fencing, HA and convergence as
their own process (`up` runs them too). With --lab-state, lab hosts are
fenced by cutting their power; without a fencer nothing is fenced, and so
no VM of a Down host is restarted (an admin declares the host up)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cloud_engine.automation.fencing import Fencer, NoFencer
from cloud_engine.automation.service import Automation
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings, SettingsError
from cloud_engine.lab import Lab
from cloud_engine.runner.components import (
    command_service,
    ensure_event_store,
    start_infrastructure,
)
from cloud_engine.runner.lab_fencer import LabFencer

COMMANDS = ("automation",)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "automation",
        help="host liveness, fencing, HA and convergence of drift"
        " (needs CLOUD_ENGINE_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--lab-state",
        metavar="DIR",
        help="fence lab hosts of the lab kept in DIR by cutting their power",
    )
    parser.add_argument("--heartbeat-timeout", type=float, default=4.0, metavar="S")
    parser.add_argument("--up-after", type=float, default=10.0, metavar="S")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "CLOUD_ENGINE_KAFKA_BOOTSTRAP: automation needs a broker (host:port); "
            "`cloud-engine up` runs one for development"
        )
    fencer: Fencer = LabFencer(Lab(Path(args.lab_state))) if args.lab_state else NoFencer()
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        with command_service(infra.target, settings) as (service, store):
            automation = Automation(
                service,
                store,
                infra.target,
                infra.bootstrap,
                settings.topic_prefix,
                fencer,
                heartbeat_timeout_s=args.heartbeat_timeout,
                up_after_s=args.up_after,
                stop_grace_s=settings.convergence_stop_grace_s,
            )
            run_component(automation.run, settings.event_loop)
    finally:
        infra.stop()
    return 0
