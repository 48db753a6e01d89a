"""`cloud-engine api`: the HTTP API on its own, against the configured
PostgreSQL (CLOUD_ENGINE_DATABASE_URL, or the embedded one). The API only
needs the database: commands go to the event store, and the relay (a
separate component) publishes them to Kafka. Given a broker
(CLOUD_ENGINE_KAFKA_BOOTSTRAP) it also serves the live event stream and
takes commands over Kafka (api/kafka_gateway.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from cloud_engine.api.app import create_app
from cloud_engine.api.kafka_gateway import CommandGateway
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.api.live import LiveConfig
from cloud_engine.api.metrics import ApiMetrics
from cloud_engine.api.server import ApiServer
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings
from cloud_engine.runner.components import (
    command_service,
    gateway_config,
    start_infrastructure,
)

COMMANDS = ("api",)
DEFAULT_PORT = 8080


def register(sub: Any) -> None:
    api = sub.add_parser("api", help="serve the HTTP API (needs only PostgreSQL)")
    api.add_argument("--host", help="address to listen on (CLOUD_ENGINE_API_HOST, 127.0.0.1)")
    api.add_argument(
        "--port",
        type=int,
        help=f"port (CLOUD_ENGINE_API_PORT, {DEFAULT_PORT}; 0 picks a free one)",
    )
    api.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.host is None:
        args.host = settings.api_host
    if args.port is None:
        args.port = settings.api_port
    if not 0 <= args.port <= 65535:
        print(f"cloud-engine: invalid: --port {args.port}", file=sys.stderr)
        return 2
    infra = start_infrastructure(settings, broker=False)
    try:
        with command_service(infra.target, settings) as (service, store):
            # The live event stream (/v1/stream, the console's) needs a broker.
            live = None
            if settings.kafka_bootstrap:
                live = LiveConfig(settings.kafka_bootstrap, settings.topic_prefix)
            metrics = ApiMetrics()
            app = create_app(
                service,
                store,
                infra.target,
                max_pending=settings.api_max_pending,
                live=live,
                metrics=metrics,
            )
            try:
                server = ApiServer(app, args.host, args.port)
            except OSError as error:
                print(f"cloud-engine: cannot listen on {args.host}:{args.port}: {error}",
                      file=sys.stderr)  # fmt: skip
                return 1
            print(f"API: {server.url} (event store {infra.target.describe()})", flush=True)
            if not settings.kafka_bootstrap:
                run_component(server.run, settings.event_loop)
            else:
                gateway = CommandGateway(
                    service,
                    store,
                    infra.target,
                    gateway_config(settings, settings.kafka_bootstrap),
                    GatewayMetrics(metrics.registry),
                    metrics,
                )

                async def both(stop: asyncio.Event) -> None:
                    # One ending (a failure) stops the other: the process
                    # ends and its supervisor starts it again.
                    tasks = [asyncio.create_task(c.run(stop)) for c in (server, gateway)]
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    stop.set()
                    # Both end before the error is raised: gather() would
                    # raise at once and the loop's teardown cancel the HTTP
                    # requests in flight (uvicorn answers those 500).
                    await asyncio.wait(tasks)
                    for task in tasks:
                        task.result()

                run_component(both, settings.event_loop)
    finally:
        infra.stop()
    print("stopped", flush=True)
    return 0
