"""`cloud-engine replay` and `cloud-engine projections status`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cloud_engine.infra.pg import connect
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Progress as ReplayProgress
from cloud_engine.projections.replay import Rebuild
from cloud_engine.projections.status import statuses
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from cloud_engine.runner.components import ensure_event_store, start_infrastructure

PROJECTIONS = ("aggregates",)


def register(sub: Any) -> None:
    replay = sub.add_parser("replay", help="rebuild a projection from the event store")
    replay.add_argument("projection", choices=[*PROJECTIONS, "all"])
    replay.add_argument("--to-position", type=int, metavar="N", help="stop at this position")
    projections = sub.add_parser("projections", help="read models")
    actions = projections.add_subparsers(dest="projections_command", required=True)
    actions.add_parser("status", help="each projection's position and lag")
    actions.add_parser(
        "run", help="the projection worker: Kafka into the read models (needs the bootstrap)"
    )
    for parser in (replay, projections):
        parser.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "to_position", None) is not None and args.to_position < 0:
        print("cloud-engine: invalid: --to-position must be >= 0", file=sys.stderr)
        return 2
    running = args.command == "projections" and args.projections_command == "run"
    if running and not settings.kafka_bootstrap:
        print(
            "cloud-engine: configuration error: CLOUD_ENGINE_KAFKA_BOOTSTRAP: the projection"
            " worker needs a broker (host:port); `cloud-engine up` runs one for development",
            file=sys.stderr,
        )
        return 2
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        if running:
            worker = ProjectionWorker(
                infra.target, consumer_config(infra.bootstrap, settings.topic_prefix)
            )
            run_component(worker.run, settings.event_loop)
            return 0
        return asyncio.run(_run(args, infra.target))
    finally:
        infra.stop()


async def _run(args: argparse.Namespace, target: Any) -> int:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        if args.command == "replay":
            return await _replay(target, args.to_position)
        for s in await statuses(conn, target.schema):
            print(f"{s.projection:<16} position {s.position:>10}  lag {s.lag}")
        return 0
    finally:
        await conn.close()


async def _replay(target: Any, to_position: int | None) -> int:
    columns = (
        TextColumn("rebuilding"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} events"),
        TextColumn("{task.fields[rate]:,.0f} events/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("replay", total=None, rate=0.0)

        def hook(progress: ReplayProgress) -> None:
            bar.update(
                task, completed=progress.events, total=progress.target, rate=progress.per_second
            )

        result = await Rebuild(target).run(to_position=to_position, hook=hook)
    print(f"rebuilt from {result.events} events up to position {result.position}")
    return 0
