"""`cloud-engine up`: everything on embedded defaults, started in dependency
order and stopped in reverse.

Start: PostgreSQL (one a killed `up` left running is stopped first), the
dev broker, the event store's and the read models' tables, the demo hosts
(lab hosts, or libvirt's test driver: runner/up_hosts.py), the demo fabric,
then every component at once: each waits for what it consumes, and no table
is read before it exists. "ready", with the API's URL and token, is printed
once the read models reflect the whole log as it stood when the components
started, so the first list a user asks for is complete, and once VMs the
log records Running but no host runs are recorded Stopped through the
engine (runner/up_settle.py), so the record agrees with what runs.

Stop, on SIGINT or SIGTERM at any moment (infra.process.StopSignals): the API,
the engine and the effector first (nothing new is accepted, decided or
done), then the relay and the projection worker, then the lab (its VMs and
daemons), then the broker, and PostgreSQL last, so no client sees its
server go away under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from cloud_engine.api.app import create_app
from cloud_engine.api.kafka_gateway import CommandGateway
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.api.live import LiveConfig
from cloud_engine.api.metrics import ApiMetrics
from cloud_engine.api.server import ApiServer
from cloud_engine.automation.drain import Drainer
from cloud_engine.automation.fencing import Fencer, NoFencer
from cloud_engine.automation.service import Automation
from cloud_engine.bus.relay import Relay
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.logs import lifecycle
from cloud_engine.infra.pg import connect
from cloud_engine.infra.process import Stopping, StopSignals, run_component
from cloud_engine.infra.settings import Settings, SettingsError
from cloud_engine.projections import readmodel
from cloud_engine.projections.status import wait_caught_up
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from cloud_engine.runner import engine_cli, up_hosts
from cloud_engine.runner.components import (
    command_service,
    gateway_config,
    relay_config,
    start_infrastructure,
)
from cloud_engine.runner.demo import admin_token, describe, ensure_demo_fabric
from cloud_engine.runner.demo_images import ImageServer
from cloud_engine.runner.lab_fencer import LabFencer
from cloud_engine.runner.supervise import InfraWatch, Restarts, Supervised
from cloud_engine.runner.up_hosts import DemoHosts
from cloud_engine.runner.up_settle import Settle

log = structlog.get_logger("runner.up")

# How long a stage's components may take to stop before they are cancelled:
# above what a clean stop takes (0.2-0.5 s), so only a stuck one is cut.
STAGE_GRACE_S = 2.0


class Component(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


def up(settings: Settings) -> int:
    with StopSignals() as signals:
        try:
            return _up(settings, signals)
        except Stopping:
            pass
        except Exception:
            # A Ctrl-C at the terminal also reaches the children started in
            # our process group (pg_ctl starting the server): what failed
            # then failed because of the stop, and is stopped with the rest.
            if signals.received is None:
                raise
        assert signals.received is not None
        lifecycle(log, "stopped while starting", signal=signals.received.name)
        print("stopped", flush=True)
        return 0


def _up(settings: Settings, signals: StopSignals) -> int:
    began = time.monotonic()
    # Alongside PostgreSQL and the broker: seconds either way, mostly waits.
    early = up_hosts.begin(settings)
    try:
        infra = start_infrastructure(settings)
    except BaseException:
        if early is not None:
            early.discard()
        raise
    images: ImageServer | None = None
    hosts: DemoHosts | None = None
    try:
        signals.check()
        with command_service(infra.target, settings) as (service, store):
            # The effector's reconciler and the API read the read models
            # from their first moment; the projection worker would create
            # the tables only once it runs.
            asyncio.run(_prepare_read_models(infra.target))
            signals.check()
            hosts = up_hosts.start(settings, store, signals, early)
            signals.check()
            fabric, images = ensure_demo_fabric(
                service,
                store,
                settings.data_dir,
                hosts=hosts.count,
                lab=hosts.hosts,
                public=hosts.lab.public_network() if hosts.lab is not None else None,
            )
            signals.check()
            token = asyncio.run(admin_token(infra.target, settings.data_dir))
            restarts = Restarts()
            metrics = ApiMetrics()
            metrics.registry.register(restarts)

            def api_server(port: int) -> ApiServer:
                app = create_app(
                    service,
                    store,
                    infra.target,
                    max_pending=settings.api_max_pending,
                    metrics=metrics,
                    live=LiveConfig(infra.bootstrap, settings.topic_prefix),
                )
                return ApiServer(app, settings.api_host, port)

            try:
                first_api = api_server(settings.api_port)
            except OSError as error:
                raise SettingsError(
                    f"CLOUD_ENGINE_API_PORT: cannot listen on"
                    f" {settings.api_host}:{settings.api_port}: {error}"
                ) from None
            # A restarted API listens where the first one did.
            apis = iter([first_api])
            api = Supervised(
                "api", lambda: next(apis, None) or api_server(first_api.port), restarts
            )
            print(f"event store: {infra.target.describe()}")
            if infra.embedded_db is not None:
                print(f"embedded PostgreSQL data: {settings.pgdata}")
            kind = "embedded dev broker" if infra.dev_broker else "Kafka"
            prefix = settings.topic_prefix
            print(
                f"{kind}: {infra.bootstrap} (topics {prefix}.<type>.events; commands"
                f" {prefix}.commands, answers {prefix}.command.results)"
            )
            print("demo fabric:")
            for line in describe(store, fabric):
                print(f"  {line}")
            if hosts.kind == "lab":
                print(up_hosts.describe(hosts))
            position = store.max_position()
            print(f"events stored: {position}", flush=True)
            # Started in this order, stopped in the reverse one: what feeds
            # the read models and the bus; once the read models reflect the
            # log, what reads them to decide and act (the engine places VMs
            # on hosts' rows, the effector finds a template's image store in
            # them); the API last, so it is the first to stop taking commands.
            # Each made anew when it ended on its own (runner.supervise).
            domain_type = hosts.domain_type
            feeds: dict[str, Component] = {
                "relay": Supervised(
                    "relay",
                    lambda: Relay(infra.target, relay_config(settings, infra.bootstrap)),
                    restarts,
                ),
                "projections": Supervised(
                    "projections",
                    lambda: ProjectionWorker(
                        infra.target, consumer_config(infra.bootstrap, settings.topic_prefix)
                    ),
                    restarts,
                ),
            }

            def engine_part(index: int) -> Callable[[], Component]:
                return lambda: engine_cli.engine_components(
                    service, store, settings, infra.target, infra.bootstrap
                )[index]

            engine = engine_cli.engine_components(
                service, store, settings, infra.target, infra.bootstrap
            )
            actors: dict[str, Component] = {
                type(part).__name__: Supervised(type(part).__name__, engine_part(i), restarts)
                for i, part in enumerate(engine)
            }
            actors["Drainer"] = Supervised(
                "Drainer", lambda: Drainer(service, store, infra.target), restarts
            )
            # Liveness, fencing (lab hosts: a power cut), HA and convergence.
            fencer: Fencer = LabFencer(hosts.lab) if hosts.lab is not None else NoFencer()
            actors["automation"] = Supervised(
                "automation",
                lambda: Automation(
                    service,
                    store,
                    infra.target,
                    infra.bootstrap,
                    settings.topic_prefix,
                    fencer,
                    stop_grace_s=settings.convergence_stop_grace_s,
                ),
                restarts,
            )
            actors["effector"] = Supervised(
                "effector",
                lambda: EffectorService(
                    infra.target,
                    effector_config(infra.bootstrap, settings.topic_prefix),
                    domain_type=domain_type,
                ),
                restarts,
            )

            # Commands over Kafka: another way in, beside the HTTP API.
            gateway_metrics = GatewayMetrics(metrics.registry)
            gateway = Supervised(
                "commands",
                lambda: CommandGateway(
                    service,
                    store,
                    infra.target,
                    gateway_config(settings, infra.bootstrap),
                    gateway_metrics,
                    metrics,
                ),
                restarts,
            )

            settle = Settle(service, store, infra.target)

            async def caught_up_and_settled() -> None:
                await _wait_caught_up(infra.target, position)
                await settle.stop()
                if settle.stopped:
                    # The reconciler reads them Stopping, not drifted.
                    await _wait_caught_up(infra.target, store.max_position())

            stages = [
                Stage(feeds),
                Stage(actors, needs=caught_up_and_settled),
                # The effector has carried out the stops the record needed.
                Stage({"api": api, "commands": gateway}, needs=settle.finished),
            ]

            async def announce() -> None:
                while not first_api.started:
                    await asyncio.sleep(0.01)
                print(f"API: {first_api.url}")
                print(f"web console: {first_api.url}/ui/")
                print(f"admin token: {token}")
                print("ready; Ctrl-C stops everything", flush=True)
                lifecycle(log, "ready", took_s=round(time.monotonic() - began, 2))

            failed: list[str] = []

            async def components(stop: asyncio.Event) -> None:
                failed.extend(await run_in_stages(stop, stages, announce, signals))

            # From here on a dead PostgreSQL or broker is started again.
            watch = InfraWatch(infra, restarts)
            watch.start()
            try:
                run_component(components, settings.event_loop, signals)
            finally:
                watch.stop()
    finally:
        if images is not None:
            images.close()
        # After the effector (stopped with the components), before the
        # broker and PostgreSQL: QEMU gets SIGTERM and flushes its images.
        if (hosts is not None and hosts.lab is not None) or (early and not early.taken):
            began = time.monotonic()
            if hosts is not None and hosts.lab is not None:
                hosts.stop()
            elif early is not None:
                early.discard()  # stopped before start() took it over
            lifecycle(log, "lab stopped", took_s=round(time.monotonic() - began, 2))
        # The broker before PostgreSQL (the durable broker keeps its
        # records there); each timed, as a supervisor gives `up` 2 s or so.
        if infra.dev_broker is not None:
            began = time.monotonic()
            infra.dev_broker.stop()
            lifecycle(log, "broker stopped", took_s=round(time.monotonic() - began, 2))
        began = time.monotonic()
        infra.stop()
        if infra.embedded_db is not None:
            lifecycle(log, "PostgreSQL stopped", took_s=round(time.monotonic() - began, 2))
    print("stopped", flush=True)
    return 1 if failed else 0


async def _prepare_read_models(target: DatabaseTarget) -> None:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
    finally:
        await conn.close()


async def _wait_caught_up(target: DatabaseTarget, position: int) -> None:
    lifecycle(log, "waiting for the read models", events=position)
    conn = await connect(target)
    try:
        await wait_caught_up(conn, target.schema, position)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Stage:
    components: Mapping[str, Component]
    # Awaited before the stage starts: what its components need that the
    # stages before provide (the read models caught up with the log).
    needs: Callable[[], Awaitable[None]] | None = None


async def run_in_stages(
    stop: asyncio.Event,
    stages: Sequence[Stage],
    announce: Callable[[], Awaitable[None]],
    signals: StopSignals | None = None,
) -> list[str]:
    """Start the stages in order (a stage's components all at once, once
    what it needs is there), then run `announce` once, and run until stop is
    set or a component ends (it failed, or ended on its own: a failure too).
    Then stop the started stages last first, each completely before the one
    before it. Returns the names of the components that failed (logged)."""
    stops: list[asyncio.Event] = []
    tasks: dict[str, asyncio.Task[None]] = {}
    stopping = asyncio.create_task(stop.wait())
    failed: list[str] = []

    async def until_needed(step: Awaitable[None]) -> bool:
        """Run a step while watching stop and the components running."""
        task = asyncio.ensure_future(step)
        await asyncio.wait({task, stopping, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        if task.exception() is not None:
            log.error("start step failed", exc_info=task.exception())
            failed.append("start")
            return False
        return True

    for stage in stages:
        if stage.needs is not None and not await until_needed(stage.needs()):
            break
        stops.append(asyncio.Event())
        for name, component in stage.components.items():
            tasks[name] = asyncio.create_task(component.run(stops[-1]), name=name)
    else:
        if await until_needed(announce()):
            await asyncio.wait({stopping, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
    ended = {name for name, task in tasks.items() if task.done()}
    stopping.cancel()
    began = time.monotonic()
    reason = signals.received.name if signals and signals.received else None
    lifecycle(log, "stopping", signal=reason, ended=sorted(ended) or None)
    took: dict[str, float] = {}

    def timed(name: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_: asyncio.Task[None]) -> None:
            took.setdefault(name, time.monotonic() - began)

        return done

    for name, task in tasks.items():
        task.add_done_callback(timed(name))
    for stage, stage_stop in reversed(list(zip(stages, stops, strict=False))):
        stage_stop.set()
        _, late = await asyncio.wait(
            [tasks[name] for name in stage.components], timeout=STAGE_GRACE_S
        )
        if late:
            # Typically a consumer still joining its group: aiokafka cannot
            # abandon a join, and the broker may hold it for seconds. It
            # has handled nothing yet, so nothing is lost by cancelling it.
            log.warning(
                "cancelled components that did not stop in time",
                components=sorted(t.get_name() for t in late),
                grace_s=STAGE_GRACE_S,
            )
            for task in late:
                task.cancel()
            await asyncio.wait(late)
    for name, task in tasks.items():
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("component failed", component=name, exc_info=error)
            failed.append(name)
        elif name in ended:
            log.error("component ended on its own", component=name)
            failed.append(name)
    slowest = max(took, key=took.__getitem__, default=None)
    lifecycle(
        log,
        "components stopped",
        took_s=round(time.monotonic() - began, 2),
        slowest=slowest,
    )
    return failed
