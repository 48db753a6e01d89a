"""The in-process pipeline the effector tests run: relay, projection
worker, effector service and (for round trips) the engine's result
recorder, as tasks of the test's event loop sharing one stop event."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.orchestration.manager import OperationManager, manager_config
from cloud_engine.orchestration.recorder import ResultRecorder
from cloud_engine.projections.worker import ProjectionWorker, consumer_config

WAIT_S = 45.0


class Pipeline:
    """Relay + projection worker (+ effectors) as tasks of this event loop."""

    def __init__(self, target: DatabaseTarget, broker: str, prefix: str) -> None:
        self.target = target
        self.broker = broker
        self.prefix = prefix
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start_engine_side(self) -> None:
        relay = Relay(
            self.target, RelayConfig(bootstrap=self.broker, topic_prefix=self.prefix, partitions=2)
        )
        worker = ProjectionWorker(self.target, consumer_config(self.broker, self.prefix))
        self.tasks += [
            asyncio.create_task(relay.run(self.stop)),
            asyncio.create_task(worker.run(self.stop)),
        ]

    def start_effector(
        self, names: Names, *, reconcile_interval_s: float = 30.0
    ) -> EffectorService:
        effector = EffectorService(
            self.target,
            effector_config(self.broker, self.prefix),
            names=names,
            name="effector@test",
            stop_timeout_s=5.0,
            reconcile_interval_s=reconcile_interval_s,
        )
        self.tasks.append(asyncio.create_task(effector.run(self.stop)))
        return effector

    def start_recorder(self, service: CommandService) -> ResultRecorder:
        recorder = ResultRecorder(service, self.broker, self.prefix)
        self.tasks.append(asyncio.create_task(recorder.run(self.stop)))
        return recorder

    def start_manager(
        self, service: CommandService, store: EventStore, *, sweep_interval_s: float = 2.0
    ) -> OperationManager:
        manager = OperationManager(
            service,
            store,
            self.target,
            manager_config(self.broker, self.prefix),
            sweep_interval_s=sweep_interval_s,
        )
        self.tasks.append(asyncio.create_task(manager.run(self.stop)))
        return manager

    def check(self) -> None:
        for task in self.tasks:
            if task.done() and task.exception() is not None:
                raise AssertionError(f"a pipeline task failed: {task.exception()!r}")

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)


async def wait_for(
    what: str, probe: Callable[[], Awaitable[bool] | bool], pipeline: Pipeline
) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        pipeline.check()
        done = probe()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def finish(pipeline: Pipeline, store: EventStore, op_id: uuid.UUID) -> Operation:
    """The operation once it has ended (any way: the caller checks how)."""

    def done() -> bool:
        op = store.load(op_id)
        return isinstance(op, Operation) and op.finished

    await wait_for(f"operation {op_id}", done, pipeline)
    op = store.load(op_id)
    assert isinstance(op, Operation)
    return op


def domains_with_uuid(hv: Hypervisor, vm_id: uuid.UUID) -> list:
    return [d for d in hv.conn.listAllDomains(0) if d.UUIDString() == str(vm_id)]


def is_running(hv: Hypervisor, vm_id: uuid.UUID) -> bool:
    doms = domains_with_uuid(hv, vm_id)
    return len(doms) == 1 and bool(doms[0].isActive())


async def read_topic(
    broker: str, topic: str, done: Callable[[list], bool], timeout_s: float = 20.0
) -> list:
    """Records of a topic from the beginning (no consumer group) until
    done(records) holds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while not done(records):
            assert time.monotonic() < deadline, f"{topic}: only {len(records)} records"
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records
