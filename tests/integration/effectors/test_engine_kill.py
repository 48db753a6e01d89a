"""The engine process killed (SIGKILL) at random points while 20 VMs deploy
on real PostgreSQL, the dev broker and qemu:///system: every operation still
ends (succeeded or compensated) and nothing leaks.

Beside the 20, a few deploys are doomed: their template's image vanished
from the image store and its URL, so the effector cannot create their root
volume after the engine placed them (capacity, pool space, NICs and IPs
held), and the engine must compensate them, kills or not.

The relay, the projection worker and the effector run in this process; the
engine (`cloud-engine engine`: the operation manager and the recorder of
effector results) runs as a real subprocess. The deploys go in waves: after
each wave the engine is killed once it has written a random number of
events (so the kill lands while it works: placing, recording results,
advancing), after a random extra delay; the next wave is submitted while no
engine runs, then the engine is restarted. The last incarnation must drive
everything home through its sweep of unfinished operations and Kafka's
redelivery of what the dead one had not committed.

Then, read from the log (not the read models) and from libvirt: the 20
succeeded and the doomed were compensated; the Running VMs' addresses are
distinct; each host holds exactly its Running VMs' CPU and RAM, each pool
exactly its live volumes' bytes; every allocated IP and every unreleased NIC
belongs to a Running VM; a compensated deploy left no volume, file or
domain; the domains on libvirt are exactly the Running VMs', all active.

The kill schedule is seeded: CLOUD_ENGINE_TEST_KILL_SEED replays one (the
seed is in every failure message); by default each run draws a new one.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter, defaultdict

import pytest
from effector_pipeline import Pipeline
from engine_process import (
    EngineProcess,
    all_aggregates,
    domains,
    of_type,
    power_off,
    statuses,
    volume_files,
)
from fabric_setup import effector_fabric
from template_server import make_template_image

from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.storage.templates import image_path
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import DeployVm
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.guard import ResourceGuard
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.projections.history import history

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

GiB = 1024**3
VMS = 20
DOOMED = 3
SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
# Generous deadlines for a 2-core machine shared with other work: a restarted
# engine's consumers wait out the dead member's session (10-20 s on the dev
# broker) before the broker gives them partitions.
KILL_WAIT_S = 60.0
FINISH_S = 120.0
LIBVIRT_SETTLE_S = 60.0


async def test_engine_killed_during_deploys_leaves_nothing_stuck_or_leaked(
    pg_target, store: EventStore, broker, topic_prefix, libvirt_uri,
    hypervisor: Hypervisor, name_prefix, tmp_path, served,
):  # fmt: skip
    seed = int(os.environ.get("CLOUD_ENGINE_TEST_KILL_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    kills = rng.randint(2, 3)
    cuts = sorted(rng.sample(range(3, VMS - 2), kills))
    waves = [b - a for a, b in zip([0, *cuts], [*cuts, VMS], strict=True)]
    doomed_in = Counter(rng.randrange(kills + 1) for _ in range(DOOMED))  # wave -> how many
    schedule: list[str] = []  # what each kill hit, for failure messages
    names = Names(prefix=name_prefix)

    def context() -> str:
        return (
            f"seed {seed}, waves {waves}, doomed {dict(doomed_in)},"
            f" kills: {'; '.join(schedule) or 'none yet'}"
        )

    # This process is a client beside the engine process, like an API: its
    # cached copy of the template stays Downloading while the engine marks
    # it Ready; the service's read validation must see that (it did not
    # before, tests/integration/test_read_validation.py).
    client = CommandService(store)
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    engines: list[EngineProcess] = []

    def start_engine() -> EngineProcess:
        n = len(engines)
        engine = EngineProcess(pg_target, broker, topic_prefix, tmp_path / f"engine-{n}.log")
        engines.append(engine)
        return engine

    async def until(what: str, probe, deadline_s: float, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + deadline_s
        while not await asyncio.to_thread(probe):
            pipeline.check()
            assert engines[-1].alive(), f"the engine exited:\n{engines[-1].tail()}"
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what} ({context()})\n{engines[-1].tail()}"
            )
            await asyncio.sleep(poll_s)

    try:
        pipeline.start_engine_side()
        pipeline.start_effector(names)
        engine = start_engine()
        # 16 vCPUs a host: neither takes all 20 VMs, so both get some.
        fabric = await asyncio.to_thread(
            effector_fabric,
            client,
            libvirt_uri,
            tmp_path,
            served,
            hosts=2,
            cpu_cores=16,
            ram_mb=2048,
        )
        # Fabric's pool holds 8 root disks: a second pool of the same cluster
        # takes the rest, so pool accounting is checked on both.
        first_pool = store.load(fabric.pool)
        assert isinstance(first_pool, StoragePool)
        second_pool = (
            await client.execute_async(
                CreateStoragePool(
                    zone_id=fabric.zone,
                    cluster_id=first_pool.cluster_id,
                    name="primary-2",
                    scope="cluster",
                    capacity_bytes=24 * GiB,
                    url=str(tmp_path / "primary-2"),
                )
            )
        ).aggregate_id
        pools = [fabric.pool, second_pool]
        # Networks of this test's own: a libvirt network cannot start while
        # another holds its subnet, and other tests on this libvirtd realise
        # Fabric's fixed 10.50/10.51 ones.
        subnets = random.SystemRandom().sample(range(100 * 256, 250 * 256), 2)
        networks = [
            (
                await client.execute_async(
                    CreateNetwork(
                        account="acme",
                        name=f"kill-net-{i}",
                        zone_id=fabric.zone,
                        cidr=f"10.{s // 256}.{s % 256}.0/24",
                        isolation="none",
                    )
                )
            ).aggregate_id
            for i, s in enumerate(subnets)
        ]
        # The doomed template: fetched, then its image gone from the image
        # store and from its URL, as if lost.
        _, digest = make_template_image(served.root, "doomed.qcow2")
        doomed_template = (
            await client.execute_async(
                RegisterTemplate(
                    name="doomed",
                    zone_id=fabric.zone,
                    url=f"{served.base_url}/doomed.qcow2",
                    format="qcow2",
                    size_bytes=4 * 1024 * 1024,
                    os_type="None",
                    checksum=f"sha256:{digest}",
                )
            )
        ).aggregate_id
        for template in (fabric.template, doomed_template):
            await client.execute_async(RequestTemplateDownload(template_id=template))
            await until(
                f"template {template} Ready",
                lambda t=template: getattr(store.load(t), "state", "") == "Ready",
                KILL_WAIT_S,
            )
        (served.root / "doomed.qcow2").unlink()
        image_path(tmp_path / "secondary", doomed_template, "qcow2").unlink()

        async def submit(wave: int) -> list[uuid.UUID]:
            start = len(op_ids)
            templates = [fabric.template] * waves[wave] + [doomed_template] * doomed_in[wave]
            results = await asyncio.gather(
                *(
                    client.execute_async(
                        DeployVm(
                            account="acme",
                            name=f"vm-{start + i}",
                            zone_id=fabric.zone,
                            template_id=template,
                            spec=SPEC,
                            network_ids=tuple(networks),
                            strategy="dispersing",  # both hosts get VMs
                        )
                    )
                    for i, template in enumerate(templates)
                )
            )
            ids = [r.aggregate_id for r in results]
            doomed_ops.update(ids[waves[wave] :])
            return ids

        began = time.monotonic()
        op_ids: list[uuid.UUID] = []
        doomed_ops: set[uuid.UUID] = set()
        op_ids += await submit(0)
        for n in range(kills):
            written_before = store.max_position()
            # Killed once this incarnation has done a random amount of work
            # (about 20 events make a deploy), plus a random moment more.
            # Polled tightly so that small thresholds land inside placing.
            threshold = rng.randint(1, 12 * waves[n])
            extra_s = rng.choice([0.0, rng.uniform(0.0, 1.5)])
            await until(
                f"engine {n} to write {threshold} events",
                lambda since=written_before, wanted=threshold: (
                    store.max_position() - since >= wanted
                ),
                KILL_WAIT_S,
                poll_s=0.01,
            )
            await asyncio.sleep(extra_s)
            open_ops = [o for o in statuses(store, op_ids).values() if not o.finished]
            engine.kill()
            steps = Counter(f"{o.status}/{o.current_step}" for o in open_ops)
            schedule.append(
                f"#{n} after {threshold} events + {extra_s:.2f}s with {dict(steps)} open"
            )
            # The premise: the kill landed while deploys were in flight.
            assert open_ops, f"every deploy had finished before kill {n} ({context()})"
            # The next wave is stored while no engine runs; the next one finds it.
            op_ids += await submit(n + 1)
            engine = start_engine()

        def all_finished() -> bool:
            return all(o.finished for o in statuses(store, op_ids).values())

        await until("every deploy to finish", all_finished, FINISH_S)
        took_s = time.monotonic() - began
        ops = statuses(store, op_ids)
        by_status = Counter(op.status for op in ops.values())
        errors = {str(o.id): o.error for o in ops.values() if o.status != "succeeded"}
        # A string, not a tuple: pytest shortens a tuple's repr, and with it the
        # seed and each odd operation's history (what an intermittent failure needs).
        odd = {
            str(o.id): [
                f"v{e.version} {e.event} {e.actor}: {e.summary}" for e in history(store, o.id)
            ]
            for o in ops.values()
            if o.status not in ("succeeded", "compensated")
        }
        assert set(by_status) <= {"succeeded", "compensated"}, (
            f"{by_status}\nerrors: {errors}\nhistories: {odd}\n{context()}"
        )
        # The doomed failed where they should have, and were compensated.
        for op_id in doomed_ops:
            op = ops[op_id]
            where = (str(op_id), op.status, op.failed_step, op.error, context())
            assert op.status == "compensated" and op.failed_step == "provision", where
            assert "volume" in (op.error or ""), (op.error, context())

        vm_ids = {op.id: op.resource_id for op in ops.values()}
        vms = {v: store.load(v) for v in vm_ids.values()}
        running = {v for v, vm in vms.items() if getattr(vm, "state", None) == "Running"}
        succeeded = {vm_ids[o] for o, op in ops.items() if op.status == "succeeded"}
        assert running == succeeded, (
            {str(v): getattr(vms[v], "state", None) for v in running ^ succeeded},
            context(),
        )
        for vm_id in set(vm_ids.values()) - running:
            vm = vms[vm_id]
            assert isinstance(vm, VirtualMachine) and vm.state in ("Expunged", "Error"), (
                vm_id,
                getattr(vm, "state", None),
                context(),
            )

        # The hypervisor settles on exactly the Running VMs: their domains
        # active, nobody else's; their volume files, nobody else's (a
        # compensated deploy's files are deleted after the log says so).
        wanted_domains = {names.domain(v): True for v in running}
        live_volume_ids = {
            v.id
            for v in of_type(await asyncio.to_thread(all_aggregates, store), Volume)
            if v.state != "Destroyed"
        }
        wanted_files = {names.volume(v) for v in live_volume_ids}
        await until(
            "libvirt to hold exactly the Running VMs' domains and volumes",
            lambda: (
                domains(hypervisor, names) == wanted_domains
                and volume_files(hypervisor, names) == wanted_files
            ),
            LIBVIRT_SETTLE_S,
        )

        everything = await asyncio.to_thread(all_aggregates, store)
        # No operation of any kind (compensation expunges through the same
        # machinery) is left unfinished, and no guard is left held.
        unfinished = [
            f"{o.kind} {o.id} {o.status}/{o.current_step}"
            for o in of_type(everything, Operation)
            if not o.finished
        ]
        assert unfinished == [], (unfinished, context())
        held = [str(g.resource_id) for g in of_type(everything, ResourceGuard) if g.operation_id]
        assert held == [], (held, context())

        # Capacity: each host holds exactly its Running VMs, nothing twice.
        placed: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
        for vm_id in running:
            vm = everything[vm_id]
            assert isinstance(vm, VirtualMachine) and vm.host_id is not None
            placed[vm.host_id].add(vm_id)
        for host in of_type(everything, Host):
            assert set(host.reservations) == placed[host.id], (host.name, context())
            assert host.cpus_used == SPEC.cpus * len(placed[host.id])
            assert host.ram_used_mb == SPEC.ram_mb * len(placed[host.id])
        assert all(placed[h] for h in fabric.hosts), "a host got no VM: nothing spread"

        # Storage: each pool holds exactly its live volumes' bytes; every
        # live volume is attached to a Running VM; a compensated deploy's
        # volumes are destroyed.
        volumes = of_type(everything, Volume)
        for pool in of_type(everything, StoragePool):
            live = [v for v in volumes if v.state != "Destroyed" and v.pool_id == pool.id]
            mine = {v.id: v.size_bytes for v in live}
            assert dict(pool.reservations) == mine, (pool.name, context())
            assert pool.used_bytes == sum(mine.values())
        assert {p.id for p in of_type(everything, StoragePool)} == set(pools)
        for volume in volumes:
            if volume.state != "Destroyed":
                where = (str(volume.id), volume.state, str(volume.vm_id), context())
                assert volume.state == "Attached" and volume.vm_id in running, where
        for op in ops.values():
            if op.status == "compensated":
                for volume_id in op.params.volume_ids:
                    volume = everything[volume_id]
                    assert isinstance(volume, Volume) and volume.state == "Destroyed"

        # Addresses: the networks' allocations are exactly the Running VMs'
        # NICs' addresses, distinct per network; no IP or NIC held otherwise.
        nics = [n for n in of_type(everything, Nic) if n.state != "Released"]
        assert all(n.vm_id in running for n in nics), (
            [(str(n.id), n.state, str(n.vm_id)) for n in nics if n.vm_id not in running],
            context(),
        )
        assert sorted(n.vm_id for n in nics) == sorted(v for v in running for _ in networks), (
            "not one NIC per network per Running VM",
            context(),
        )
        ips = [i for i in of_type(everything, IpAddress) if i.state != "Released"]
        assert all(i.state == "Associated" and i.owner_id in running for i in ips), (
            [(str(i.id), i.state, str(i.owner_id)) for i in ips if i.owner_id not in running],
            context(),
        )
        for network in of_type(everything, Network):
            held_ips = {i.address: i.id for i in ips if i.network_id == network.id}
            assert dict(network.allocated) == held_ips, (network.name, context())
            on_network = [n.address for n in nics if n.network_id == network.id]
            assert len(on_network) == len(set(on_network)), (network.name, context())
            assert set(on_network) == set(held_ips), (network.name, context())
            if network.id in networks:
                assert len(on_network) == len(running)

        # Nothing else can fail (capacity to spare, a healthy hypervisor): a
        # kill must make the engine resume, never give a deploy up.
        print(f"engine kill: {dict(by_status)} in {took_s:.1f}s ({context()})")
        assert by_status == {"succeeded": VMS, "compensated": DOOMED}, (errors, context())
    finally:
        for engine in engines:
            engine.stop()
        await pipeline.close()
        client.close()
        await power_off(hypervisor, names)
