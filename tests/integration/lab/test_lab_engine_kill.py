"""`cloud-engine engine` (the operation manager and the result recorder)
SIGKILLed in the middle of a host's drain and of an HA run on the lab,
then started again: both finish, no VM runs twice, no operation is left
unfinished, no VM in a transitional state, and capacity is held exactly
where each VM runs. The relay, the read models, an effector, automation
(liveness, fencing through the lab, HA) and the drainer run in this
process; only the engine dies. One cloud for both: the drain first (all
hosts up), then the HA run of the drained host."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud_engine.automation.drain import Drainer
from cloud_engine.automation.service import Automation
from cloud_engine.effectors.executor import FAULT_ENV
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.commands.hosts import ExitHostMaintenance
from cloud_engine.engine.commands.maintenance import HostOperation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.host_ha import restart_id, run_id
from cloud_engine.engine.operations.host_maintenance import migration_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import read_model
from cloud_engine.lab import Lab, LabHost
from cloud_engine.runner.lab_fencer import LabFencer
from tests.integration.effectors.effector_pipeline import wait_for
from tests.integration.effectors.engine_process import EngineProcess, all_aggregates, of_type
from tests.integration.lab.lab_cloud import NAMES, Cloud, finish, lab_cloud, reserved_on, running_on

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

TRANSITIONAL = ("Starting", "Stopping", "Migrating")
# The engine's sweep of unfinished operations: every second, not every 5.
ENGINE_ENV = {"CLOUD_ENGINE_OPERATION_SWEEP_S": "1"}


def _start_in_process(cloud: Cloud, lab: Lab) -> None:
    """The effector (checks every 3 s, a failing host every 0.5 s, Suspect
    after 2 misses, the default), automation fencing through the lab, the drainer."""
    pipeline = cloud.pipeline
    effector = EffectorService(
        pipeline.target,
        effector_config(pipeline.broker, pipeline.prefix),
        names=NAMES,
        name="effector@lab-engine-kill",
        stop_timeout_s=5.0,
        reconcile_interval_s=3.0,
    )
    automation = Automation(
        cloud.service,
        cloud.store,
        pipeline.target,
        pipeline.broker,
        pipeline.prefix,
        LabFencer(lab),
        check_s=0.5,
        heartbeat_timeout_s=4.0,
        up_after_s=3.0,
    )
    drainer = Drainer(cloud.service, cloud.store, pipeline.target, interval_s=0.2)
    for part in (effector, automation, drainer):
        pipeline.tasks.append(asyncio.create_task(part.run(pipeline.stop)))


async def _kill_when(engine: EngineProcess, what: str, probe: Callable[[], bool]) -> None:
    """SIGKILL the engine as soon as probe() holds (polled every 10 ms in a
    thread: the moments these tests aim at last a second or two)."""

    def poll() -> None:
        deadline = time.monotonic() + 60.0
        while not probe():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    await asyncio.to_thread(poll)
    engine.kill()


async def _started(engine: EngineProcess) -> None:
    """A new engine in its consumer group: on a busy machine its start (and
    the broker's wait for the killed member's session to end) takes tens of
    seconds, which the waits for the operations should not have to cover."""

    def poll() -> None:
        deadline = time.monotonic() + 120.0
        while b'"consumer started"' not in engine.log.read_bytes():
            assert engine.alive(), engine.tail()
            assert time.monotonic() < deadline, f"the engine did not start: {engine.tail()}"
            time.sleep(0.2)

    await asyncio.to_thread(poll)


def _op(cloud: Cloud, op_id: uuid.UUID) -> Operation | None:
    found = cloud.store.load(op_id)
    return found if isinstance(found, Operation) else None


def _in_flight(op: Operation | None, step: str) -> bool:
    """Placed and sent to the effector, not yet answered."""
    return op is not None and not op.finished and op.current_step == step


def _host(cloud: Cloud, host_id: uuid.UUID) -> Host:
    found = cloud.store.load(host_id)
    assert isinstance(found, Host)
    return found


def _asked(cloud: Cloud, vm_id: uuid.UUID, topic: str) -> int:
    """How many times the log asked the VM for it (MigrationRequested, ...)."""
    return sum(
        1 for e in cloud.store.recorder.select_events_of([vm_id]) if e.topic.endswith(f".{topic}")
    )


async def _projected_enabled(cloud: Cloud, host_id: uuid.UUID) -> None:
    """The host Enabled in its read model: what the planner reads."""
    target = cloud.pipeline.target
    conn = await connect(target)
    try:

        async def there() -> bool:
            found = await conn.fetchval(
                f"SELECT state FROM {read_model(target.schema, 'host')} WHERE id = $1", host_id
            )
            return bool(found == "Enabled")

        await wait_for("host Enabled in its read model", there, cloud.pipeline)
    finally:
        await conn.close()


def _audit(cloud: Cloud, alive: list[LabHost]) -> None:
    """Nothing unfinished, nothing transitional; each VM recorded Running
    runs once, on the host its record names, and holds capacity there
    only; every other VM runs nowhere and holds nothing."""
    everything = all_aggregates(cloud.store)
    unfinished = [(o.kind, o.status) for o in of_type(everything, Operation) if not o.finished]
    assert unfinished == []
    for vm in of_type(everything, VirtualMachine):
        assert vm.state not in TRANSITIONAL, (vm.name, vm.state)
        where = running_on(alive, vm.id)
        if vm.state == "Running":
            assert where == [cloud.where(vm.id)], (vm.name, where)
        else:
            assert where == [], (vm.name, vm.state, where)
        assert reserved_on(cloud.store, cloud.fabric, vm.id) == where, vm.name


async def test_an_engine_killed_mid_drain_and_mid_ha_run_finishes_both_after_restart(
    pg_target,
    service,
    store,
    broker,
    topic_prefix,
    lab: Lab,
    hosts: list[LabHost],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    def engine_process(n: int) -> EngineProcess:
        return EngineProcess(
            pg_target, broker, topic_prefix, tmp_path / f"engine-{n}.log", env=ENGINE_ENV
        )

    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path,
        effector=False, engine=False,
    ) as cloud:  # fmt: skip
        _start_in_process(cloud, lab)
        engine = engine_process(1)
        try:
            await _started(engine)
            await cloud.template_ready()
            h1 = cloud.fabric.host_of(hosts[0])

            # The drain: SIGKILL while some of its migrations are in flight.
            vms = list(
                await asyncio.gather(*(cloud.deploy(f"drain-{i}", host_id=h1) for i in range(4)))
            )
            # Each guest's arrival is reported 1 s late: a window to kill in.
            monkeypatch.setenv(FAULT_ENV, "after-migrate:1")
            drain_id = (
                await cloud.service.execute_async(
                    HostOperation(kind="host.maintenance", host_id=h1)
                )
            ).aggregate_id

            def migrating() -> bool:
                ops = [_op(cloud, migration_id(drain_id, v)) for v in vms]
                return any(_in_flight(o, "migrate") for o in ops)

            await _kill_when(engine, "a migration in flight", migrating)
            at_kill = [getattr(_op(cloud, migration_id(drain_id, v)), "status", None) for v in vms]
            # The effector's answers reach the broker while no engine runs
            # (a new one takes seconds to start and join its groups).
            engine = engine_process(2)
            await _started(engine)
            drain = await finish(cloud.pipeline, cloud.store, drain_id)
            monkeypatch.delenv(FAULT_ENV)
            assert drain.status == "succeeded", (drain.error, at_kill, engine.tail())
            assert [(s.name, s.status) for s in drain.steps] == [
                ("prepare", "done"),
                ("migrate", "done"),
                ("maintenance", "done"),
            ]
            assert _host(cloud, h1).state == "Maintenance" and not _host(cloud, h1).reservations
            for vm_id in vms:
                where = running_on(hosts, vm_id)
                assert where == [cloud.where(vm_id)] and where != ["h1"], (vm_id, where, at_kill)
                assert reserved_on(cloud.store, cloud.fabric, vm_id) == where
                assert _asked(cloud, vm_id, "MigrationRequested") == 1, at_kill
            _audit(cloud, hosts)

            # The HA run: h1 back in service, two HA VMs on it, its power
            # cut; SIGKILL once the run has begun and asked its restarts.
            await cloud.service.execute_async(ExitHostMaintenance(host_id=h1))
            await _projected_enabled(cloud, h1)
            ha = [await cloud.deploy(f"ha-{p}", host_id=h1, ha=True, ha_priority=p) for p in (1, 2)]
            assert all(running_on(hosts, v) == ["h1"] for v in ha)
            # Each restart defined 1 s before it starts: a window to kill in.
            monkeypatch.setenv(FAULT_ENV, "after-define:1")
            lab.power_off("h1")

            def restarting() -> bool:
                fenced_at = _host(cloud, h1).fenced_at
                if fenced_at is None:
                    return False
                run = run_id(h1, fenced_at.isoformat())
                return _op(cloud, run) is not None and any(
                    _in_flight(_op(cloud, restart_id(run, v)), "start") for v in ha
                )

            await _kill_when(engine, "HA restarts asked", restarting)
            fenced_at = _host(cloud, h1).fenced_at
            assert fenced_at is not None
            run_of = run_id(h1, fenced_at.isoformat())
            at_kill = [getattr(_op(cloud, restart_id(run_of, v)), "status", None) for v in ha]
            engine = engine_process(3)
            await _started(engine)
            run = await finish(cloud.pipeline, cloud.store, run_of)
            monkeypatch.delenv(FAULT_ENV)
            assert run.status == "succeeded", (run.error, at_kill, engine.tail())
            assert [(s.name, s.status) for s in run.steps] == [
                ("fence", "done"),
                ("record", "done"),
                ("restart", "done"),
            ]
            assert run.params.vm_ids == tuple(reversed(ha))
            alive = hosts[1:]
            for vm_id in ha:
                start = _op(cloud, restart_id(run_of, vm_id))
                assert start is not None and (start.kind, start.status) == ("vm.start", "succeeded")
                assert cloud.vm(vm_id).state == "Running"
                assert running_on(alive, vm_id) == [cloud.where(vm_id)], at_kill
                assert _asked(cloud, vm_id, "StartRequested") == 2, at_kill  # deploy's, HA's
            _audit(cloud, alive)
        finally:
            engine.stop()
