"""Two `cloud-engine engine` processes at once on one PostgreSQL schema and
one dev broker (issue 6: more than one instance can run, Kafka's consumer
groups sharing the partitions, without doing any step twice), deploying 16
VMs on qemu:///system over 2 hosts, 2 pools and 2 networks of this test's
own, with stops, starts and reboots among them.

The relay, the projection worker and the effector run in this process, the
two engines as real subprocesses. Waves:

1. 8 deploys while both engines run;
2. 4 deploys, 4 forced stops and 2 reboots of wave 1's VMs at once;
3. 4 deploys and the 4 stopped VMs started again; one engine (the victim,
   drawn at random) is SIGKILLed once it wrote a random number of this
   wave's events, and the other (the survivor) must finish everything;
4. once the broker dropped the victim from both consumer groups: a forced
   stop, then a start, of VMs whose effector results only the victim had
   recorded (their results partition was the victim's: only the survivor
   taking that partition over can record them now).

Who did what is read from the database, not from logs: each engine runs
with its own libpq application name (PGAPPNAME), and a trigger this test
puts on its schema's event table notes, for every event row, the
application name of the session that wrote it. With the events' metadata
(actor: "engine" for the operation manager, "effector:..." for the recorder
of effector results; causation: "sweep" or the id "<aggregate>:<version>"
of the Kafka event that triggered the manager, whose partition follows from
the aggregate id and the topic's partition count read from the broker) this
shows that before the kill each engine's manager
drove steps from Kafka partitions of its own (the other never drove from
those) and each engine's recorder recorded effector results; and that after
the kill the survivor drove steps from partitions only the victim had
driven from, and recorded results from the victim's results partitions.

Then, read from the log (not the read models) and from libvirt: every
operation succeeded, each step exactly once (one StepCompleted per step of
each operation); each piece of effector work requested exactly as often as
the operations asked for it (one placement, one volume creation, one start
per deploy and per start, one stop per stop, one reboot per reboot, one
host reservation per placement, one pool reservation per volume, one IP per
network per VM, each network implemented once, one guard acquisition per
operation), and each request answered by exactly one recorded result (the
result's causation is the work item's id, derived from the request's
aggregate id and version); every VM Running with addresses distinct per
network; each host holds exactly its Running VMs' CPU and RAM, each pool
exactly its volumes' bytes; libvirt holds exactly the Running VMs' domains,
all active, and their volume files.

The schedule (victim, kill point, which VMs stop and reboot) is seeded:
CLOUD_ENGINE_TEST_TWO_ENGINES_SEED replays one (the seed is in every failure
message); by default each run draws a new one. A failure leaves the log, one
event a line with its writer and metadata, in the test's tmp_path/events.txt
beside the engines' own logs (the schema is dropped after the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
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
from eventsourcing.persistence import StoredEvent
from fabric_setup import effector_fabric
from psycopg.sql import SQL, Identifier
from template_server import Served

from cloud_engine.bus.naming import topic_for
from cloud_engine.bus.outgoing import partition_for
from cloud_engine.bus.work import work_id
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.catalog import PUBLIC_NAMES
from cloud_engine.engine.commands.base import Command, CommandResult
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import DeployVm, VmOperation, VmOperationKind
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.metadata import EventMeta
from cloud_engine.engine.operations.guard import guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.orchestration.manager import ENGINE, manager_config

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

GiB = 1024**3
SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
NAMES = ("engine-a", "engine-b")  # each engine's application name
CLIENT = "client"  # this process (the test's commands)
WRITERS = "two_engines_writers"
WAVE_DEPLOYS = (8, 4, 4)
STOPS = 4  # wave 2 stops these of wave 1's VMs, wave 3 starts them again
REBOOTS = 2  # wave 2 reboots these of wave 1's others
TAKEOVER_VMS = 3  # at most, stopped and started in wave 4
# Generous for a 2-core machine shared with other work: a dead member's
# partitions go to the survivor only when its session expired (10-20 s on
# the dev broker).
WAIT_S = 90.0
LIBVIRT_SETTLE_S = 60.0


# Who wrote each event -----------------------------------------------------------


def record_writers(target: DatabaseTarget, store: EventStore) -> None:
    """A trigger on the event table noting, for every event row, the
    application name of the session that wrote it."""
    s = Identifier(target.schema)
    w = Identifier(WRITERS)
    fn = Identifier(f"{WRITERS}_note")
    statements = [
        SQL("CREATE TABLE {s}.{w} (position bigint PRIMARY KEY, application text NOT NULL)"),
        SQL(
            "CREATE FUNCTION {s}.{fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " INSERT INTO {s}.{w} VALUES"
            " (NEW.notification_id, current_setting('application_name'));"
            " RETURN NULL; END $$"
        ),
        SQL("CREATE TRIGGER {fn} AFTER INSERT ON {s}.{t} FOR EACH ROW EXECUTE FUNCTION {s}.{fn}()"),
    ]
    table = Identifier(store.recorder.events_table_name)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement.format(s=s, w=w, fn=fn, t=table))


def written_by(store: EventStore, name: str, after: int) -> int:
    """How many events `name` wrote after that position."""
    query = SQL("SELECT count(*) AS n FROM {}.{} WHERE application = %s AND position > %s").format(
        Identifier(store.target.schema), Identifier(WRITERS)
    )
    with store.recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
        cursor.execute(query, (name, after))
        row = cursor.fetchone()
    return int(row["n"]) if row else 0


@dataclass(frozen=True)
class Logged:
    """One event of the log with the process that wrote it."""

    position: int
    aggregate_id: uuid.UUID
    version: int
    name: str  # "VirtualMachine.StartRequested"
    meta: EventMeta
    writer: str  # one of NAMES, or CLIENT
    event: Any


def read_log(store: EventStore) -> list[Logged]:
    s = Identifier(store.target.schema)
    query = SQL(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,"
        " w.application FROM {s}.{t} e LEFT JOIN {s}.{w} w ON w.position = e.notification_id"
        " ORDER BY e.notification_id"
    ).format(s=s, t=Identifier(store.recorder.events_table_name), w=Identifier(WRITERS))
    with store.recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
        cursor.execute(query)
        rows = cursor.fetchall()
    logged = []
    for row in rows:
        event: Any = store.mapper.to_domain_event(
            StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
        )
        assert row["application"] is not None, f"event {row['notification_id']}: no writer"
        logged.append(
            Logged(
                position=row["notification_id"],
                aggregate_id=row["originator_id"],
                version=row["originator_version"],
                name=type(event).__qualname__,
                meta=event.meta,
                writer=row["application"] if row["application"] in NAMES else CLIENT,
                event=event,
            )
        )
    return logged


def dump_log(store: EventStore, path: Path) -> None:
    """The log, one event a line with its writer and metadata (the schema is
    dropped after the test: this is what is left to read a failure by)."""
    with path.open("w") as out:
        for e in read_log(store):
            data = {
                k: str(v)
                for k, v in vars(e.event).items()
                if k not in ("meta", "originator_id", "originator_version", "timestamp")
            }
            out.write(
                f"{e.position} {e.writer} {e.aggregate_id} v{e.version} {e.name} {data}"
                f" actor={e.meta.actor} correlation={e.meta.correlation_id}"
                f" causation={e.meta.causation_id} at={e.event.timestamp}\n"
            )


def trigger_of(meta: EventMeta) -> uuid.UUID | None:
    """The aggregate whose Kafka event made the manager act ("<id>:<version>"),
    None for the sweep."""
    head, _, version = meta.causation_id.rpartition(":")
    if not version.isdigit():
        return None
    try:
        return uuid.UUID(head)
    except ValueError:
        return None


@dataclass
class Work:
    """What one engine did, read from the log."""

    steps_from_kafka: int = 0
    steps_from_sweep: int = 0
    results: int = 0
    partitions: set[str] = field(default_factory=set)  # manager triggers' "topic/partition"
    recorded_for: set[uuid.UUID] = field(default_factory=set)  # VMs whose results it recorded

    def summary(self) -> str:
        return (
            f"steps {self.steps_from_kafka} from Kafka + {self.steps_from_sweep} from the sweep,"
            f" {self.results} results recorded, partitions {sorted(self.partitions)}"
        )


class Partitions:
    """Where the relay put an aggregate's events: the topic of its type, the
    partition of its id (crc32 of the key, over the topic's partitions)."""

    def __init__(self, prefix: str, counts: dict[str, int]) -> None:
        self.prefix = prefix
        self.counts = counts

    def of(self, aggregate: Aggregate) -> str:
        topic = topic_for(self.prefix, PUBLIC_NAMES[type(aggregate)])
        partition = partition_for(str(aggregate.id).encode(), self.counts[topic])
        return f"{PUBLIC_NAMES[type(aggregate)]}/{partition}"


async def topic_partitions(broker: str, topics: list[str]) -> dict[str, int] | None:
    """Each topic's partition count, None while one is missing. (All
    topics described: naming one the dev broker lacks makes it create it,
    with 4 partitions.)"""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in described}
    if not set(topics) <= set(counts):
        return None
    return {t: counts[t] for t in topics}


def work_of(
    logged: Iterable[Logged],
    everything: dict[uuid.UUID, Aggregate],
    partitions: Partitions,
    vms: set[uuid.UUID],
) -> dict[str, Work]:
    work = {name: Work() for name in NAMES}
    for e in logged:
        if e.writer == CLIENT:
            continue
        done = work[e.writer]
        if e.meta.actor.startswith("effector:"):
            done.results += 1
            if e.aggregate_id in vms:
                done.recorded_for.add(e.aggregate_id)
            continue
        assert e.meta.actor == ENGINE, (e.writer, e.name, e.meta)
        trigger = trigger_of(e.meta)
        if trigger is not None:
            done.partitions.add(partitions.of(everything[trigger]))
        if e.name == "Operation.StepCompleted":
            if trigger is None:
                done.steps_from_sweep += 1
            else:
                done.steps_from_kafka += 1
    return work


async def group_members(broker: str, groups: list[str]) -> dict[str, int]:
    """Members of each stable consumer group (-1 while it rebalances), as
    the broker describes them (one group a request: the dev broker garbles
    an answer about several)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    found: dict[str, int] = {}
    try:
        for wanted in groups:
            for response in await admin.describe_consumer_groups([wanted]):
                for group in response.groups:
                    # (error_code, group, state, protocol_type, protocol, members)
                    found[group[1]] = len(group[5]) if group[2] == "Stable" else -1
    finally:
        await admin.close()
    return found


def consumer_lines(log: Path) -> list[dict[str, Any]]:
    """The engine's consumer start and stop lines (JSON)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"consumer ' in line:
            found.append(json.loads(line))
    return found


# The test -----------------------------------------------------------------------


async def test_two_engines_share_the_work_and_do_no_step_twice(
    pg_target: DatabaseTarget,
    store: EventStore,
    broker: str,
    topic_prefix: str,
    libvirt_uri: str,
    hypervisor: Hypervisor,
    name_prefix: str,
    tmp_path: Path,
    served: Served,
) -> None:
    seed = int(os.environ.get("CLOUD_ENGINE_TEST_TWO_ENGINES_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    victim_index = rng.randrange(2)
    victim, survivor = NAMES[victim_index], NAMES[1 - victim_index]
    kill_after = rng.randint(1, 25)  # events the victim wrote in wave 3
    kill_delay_s = rng.choice([0.0, rng.uniform(0.0, 1.0)])
    notes: list[str] = []
    names = Names(prefix=name_prefix)
    groups = [f"{topic_prefix}.engine.operations", f"{topic_prefix}.engine.results"]

    def context() -> str:
        return (
            f"seed {seed}, victim {victim} killed after {kill_after} events"
            f" + {kill_delay_s:.2f}s; {'; '.join(notes) or 'no notes yet'}"
        )

    record_writers(pg_target, store)
    client = CommandService(store)
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    engines: dict[str, EngineProcess] = {}
    running: set[str] = set()  # the engines expected alive

    def tails() -> str:
        return "\n".join(f"--- {n}:\n{e.tail()}" for n, e in engines.items())

    async def until(
        what: str, probe: Callable[[], bool], deadline_s: float = WAIT_S, poll_s: float = 0.2
    ) -> None:
        deadline = time.monotonic() + deadline_s
        while not await asyncio.to_thread(probe):
            pipeline.check()
            for name in running:
                assert engines[name].alive(), f"{name} exited ({context()}):\n{tails()}"
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what} ({context()})\n{tails()}"
            )
            await asyncio.sleep(poll_s)

    async def until_members(count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            members = await group_members(broker, groups)
            if all(members.get(g) == count for g in groups):
                return
            for name in running:
                assert engines[name].alive(), f"{name} exited ({context()}):\n{tails()}"
            assert time.monotonic() < deadline, (
                f"the engines' groups have {members} members, not {count} ({context()})"
            )
            await asyncio.sleep(0.5)

    async def run(commands: list[Command]) -> list[CommandResult]:
        return list(await asyncio.gather(*(client.execute_async(c) for c in commands)))

    def all_finished(op_ids: list[uuid.UUID]) -> Callable[[], bool]:
        return lambda: all(o.finished for o in statuses(store, op_ids).values())

    def assert_succeeded(op_ids: list[uuid.UUID], wave: str) -> None:
        ops = statuses(store, op_ids)
        failed = {
            f"{o.kind} {o.id}": f"{o.status} at {o.failed_step}: {o.error}"
            for o in ops.values()
            if o.status != "succeeded"
        }
        assert failed == {}, (wave, failed, context())

    try:
        pipeline.start_engine_side()
        pipeline.start_effector(names)
        # The engines start once the relay made the topics: a consumer
        # subscribing first would have the dev broker create them, with
        # another partition count.
        subscribed = manager_config(broker, topic_prefix).topics
        deadline = time.monotonic() + WAIT_S
        while (counts := await topic_partitions(broker, subscribed)) is None:
            pipeline.check()
            assert time.monotonic() < deadline, "the relay made no topics"
            await asyncio.sleep(0.2)
        partitions = Partitions(topic_prefix, counts)
        # The premise: partitions enough for two members of the group.
        assert min(counts.values()) >= 2, counts
        for name in NAMES:
            engines[name] = EngineProcess(
                pg_target, broker, topic_prefix, tmp_path / f"{name}.log", env={"PGAPPNAME": name}
            )
            running.add(name)
        # 16 vCPUs a host: dispersing puts about 8 VMs on each.
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
        # Fabric's pool holds 8 root disks, a second pool of its cluster the rest.
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
        pools = {fabric.pool, second_pool}
        # Networks of this test's own: a libvirt network cannot start while
        # another holds its subnet, and other tests on this libvirtd realise
        # Fabric's fixed 10.50/10.51 ones.
        subnets = random.SystemRandom().sample(range(100 * 256, 250 * 256), 2)
        networks = [
            (
                await client.execute_async(
                    CreateNetwork(
                        account="acme",
                        name=f"two-net-{i}",
                        zone_id=fabric.zone,
                        cidr=f"10.{s // 256}.{s % 256}.0/24",
                        isolation="none",
                    )
                )
            ).aggregate_id
            for i, s in enumerate(subnets)
        ]
        await client.execute_async(RequestTemplateDownload(template_id=fabric.template))
        await until(
            "the template Ready",
            lambda: getattr(store.load(fabric.template), "state", "") == "Ready",
        )
        # Both engines' manager and recorder in their groups before any
        # operation: the partitions are shared from the first event on.
        await until_members(2)

        op_ids: list[uuid.UUID] = []
        vm_ids: list[uuid.UUID] = []
        starts: Counter[uuid.UUID] = Counter()
        stops: Counter[uuid.UUID] = Counter()
        reboots: Counter[uuid.UUID] = Counter()
        ops_on: Counter[uuid.UUID] = Counter()  # operations per VM

        def deploys(count: int) -> list[Command]:
            first = len(vm_ids)
            return [
                DeployVm(
                    account="acme",
                    name=f"vm-{first + i}",
                    zone_id=fabric.zone,
                    template_id=fabric.template,
                    spec=SPEC,
                    network_ids=tuple(networks),
                    strategy="dispersing",  # both hosts get VMs
                )
                for i in range(count)
            ]

        def lifecycle(kind: VmOperationKind, vms: Iterable[uuid.UUID]) -> list[Command]:
            return [VmOperation(kind=kind, vm_id=v, forced=kind == "vm.stop") for v in vms]

        async def wave(label: str, commands: list[Command]) -> list[uuid.UUID]:
            results = await run(commands)
            ids = [r.aggregate_id for r in results]
            for command, result in zip(commands, results, strict=True):
                if isinstance(command, DeployVm):
                    vm_ids.append(uuid.UUID(str(result.value)))
                    ops_on[vm_ids[-1]] += 1
                elif isinstance(command, VmOperation):
                    ops_on[command.vm_id] += 1
                    {"vm.start": starts, "vm.stop": stops, "vm.reboot": reboots}[command.kind][
                        command.vm_id
                    ] += 1
            op_ids.extend(ids)
            notes.append(f"{label}: {len(ids)} operations")
            return ids

        began = time.monotonic()
        # Wave 1: deploys through both engines.
        first = await wave("wave 1", deploys(WAVE_DEPLOYS[0]))
        await until("wave 1 to finish", all_finished(first))
        assert_succeeded(first, "wave 1")
        wave_1_vms = list(vm_ids)

        # Wave 2: deploys, forced stops and reboots at once.
        to_stop = rng.sample(wave_1_vms, STOPS)
        to_reboot = rng.sample([v for v in wave_1_vms if v not in to_stop], REBOOTS)
        second = await wave(
            "wave 2",
            deploys(WAVE_DEPLOYS[1])
            + lifecycle("vm.stop", to_stop)
            + lifecycle("vm.reboot", to_reboot),
        )
        await until("wave 2 to finish", all_finished(second))
        assert_succeeded(second, "wave 2")

        # Wave 3: deploys and starts; the victim killed while they run.
        before_wave_3 = store.max_position()
        third = await wave("wave 3", deploys(WAVE_DEPLOYS[2]) + lifecycle("vm.start", to_stop))
        await until(
            f"{victim} to write {kill_after} events",
            lambda: written_by(store, victim, before_wave_3) >= kill_after,
            poll_s=0.01,
        )
        await asyncio.sleep(kill_delay_s)
        open_ops = [o for o in statuses(store, third).values() if not o.finished]
        engines[victim].kill()
        running.discard(victim)
        kill_position = store.max_position()
        steps = Counter(f"{o.kind} {o.status}/{o.current_step}" for o in open_ops)
        notes.append(f"killed at position {kill_position} with {dict(steps)} open")
        # The premise: the kill landed while wave 3 was in flight.
        assert open_ops, f"wave 3 had finished before the kill ({context()})"
        await until("wave 3 to finish", all_finished(third))
        assert_succeeded(third, "wave 3")
        vms = set(vm_ids)

        # Wave 4: the survivor alone in both groups; VMs whose results only
        # the victim recorded before the kill (their results partition, the
        # aggregate id its key, was the victim's).
        await until_members(1)
        notes.append(f"groups down to the survivor after {time.monotonic() - began:.1f}s")
        logged = await asyncio.to_thread(read_log, store)
        everything = await asyncio.to_thread(all_aggregates, store)
        recorded = work_of(
            [e for e in logged if e.position <= kill_position], everything, partitions, vms
        )
        takeover_vms = sorted(recorded[victim].recorded_for - recorded[survivor].recorded_for)
        takeover_vms = takeover_vms[:TAKEOVER_VMS]
        assert takeover_vms, (f"{victim} recorded no VM's results alone", context())
        after_wave_3 = store.max_position()
        fourth = await wave("wave 4 stops", lifecycle("vm.stop", takeover_vms))
        await until("wave 4's stops to finish", all_finished(fourth))
        assert_succeeded(fourth, "wave 4 stops")
        fifth = await wave("wave 4 starts", lifecycle("vm.start", takeover_vms))
        await until("wave 4's starts to finish", all_finished(fifth))
        assert_succeeded(fifth, "wave 4 starts")
        took_s = time.monotonic() - began

        # Who did what ------------------------------------------------------
        logged = await asyncio.to_thread(read_log, store)
        everything = await asyncio.to_thread(all_aggregates, store)
        before_kill = work_of(
            [e for e in logged if e.position <= kill_position], everything, partitions, vms
        )
        after_kill = work_of(
            [e for e in logged if e.position > kill_position], everything, partitions, vms
        )
        notes.append(
            "before the kill: " + "; ".join(f"{n}: {w.summary()}" for n, w in before_kill.items())
        )
        notes.append(f"after the kill: {survivor}: {after_kill[survivor].summary()}")
        for name in NAMES:
            done = before_kill[name]
            # Each engine's manager drove steps from Kafka, its recorder
            # recorded results: both took part.
            assert done.steps_from_kafka > 0, (name, context())
            assert done.results > 0, (name, context())
        # The manager group split the partitions: each engine drove from
        # partitions the other never drove from.
        own = {
            name: before_kill[name].partitions - before_kill[other].partitions
            for name, other in zip(NAMES, reversed(NAMES), strict=True)
        }
        assert all(own.values()), (own, context())
        # The takeover: after the kill the survivor drove from partitions
        # only the victim had, and recorded the takeover VMs' results.
        taken = after_kill[survivor].partitions & own[victim]
        assert taken, (own, after_kill[survivor].partitions, context())
        late = [e for e in logged if e.position > after_wave_3]
        for vm_id in takeover_vms:
            recorders = {
                e.writer
                for e in late
                if e.aggregate_id == vm_id and e.meta.actor.startswith("effector:")
            }
            assert recorders == {survivor}, (str(vm_id), recorders, context())

        # Each step once, each piece of work once -----------------------------
        by_aggregate: dict[uuid.UUID, list[Logged]] = defaultdict(list)
        for e in logged:
            by_aggregate[e.aggregate_id].append(e)

        def names_of(aggregate_id: uuid.UUID, *skip: str) -> Counter[str]:
            return Counter(
                e.name for e in by_aggregate[aggregate_id] if e.name.split(".")[-1] not in skip
            )

        assert {o.id for o in of_type(everything, Operation)} == set(op_ids), context()
        for op in statuses(store, op_ids).values():
            # A start's placement records its host (a deploy's, the VM's).
            chosen = 1 if op.kind == "vm.start" else 0
            assert +names_of(op.id, "Created", "StepCompleted") == +Counter(
                {"Operation.Succeeded": 1, "Operation.HostChosen": chosen}
            ), (op.kind, str(op.id), names_of(op.id), context())
            completed = Counter(
                e.event.step for e in by_aggregate[op.id] if e.name == "Operation.StepCompleted"
            )
            assert completed == Counter(s.name for s in op.steps), (
                op.kind,
                str(op.id),
                completed,
                context(),
            )

        def answered(aggregate_id: uuid.UUID, request: str, result: str) -> None:
            """Each request answered by one recorded result, and no result
            without its request."""
            asked = [
                str(work_id(aggregate_id, e.version))
                for e in by_aggregate[aggregate_id]
                if e.name.endswith(f".{request}")
            ]
            got = [
                e.meta.causation_id
                for e in by_aggregate[aggregate_id]
                if e.name.endswith(f".{result}")
            ]
            assert sorted(asked) == sorted(got), (str(aggregate_id), request, result, context())

        reserved: Counter[uuid.UUID] = Counter()
        released: Counter[uuid.UUID] = Counter()
        for host in of_type(everything, Host):
            for e in by_aggregate[host.id]:
                if e.name == "Host.CapacityReserved":
                    reserved[e.event.vm_id] += 1
                elif e.name == "Host.CapacityReleased":
                    released[e.event.vm_id] += 1
        pooled: Counter[uuid.UUID] = Counter()
        for pool_id in pools:
            assert names_of(pool_id, "Created", "StorageReserved") == Counter(), context()
            pooled.update(
                e.event.volume_id
                for e in by_aggregate[pool_id]
                if e.name == "StoragePool.StorageReserved"
            )
        ips: Counter[tuple[uuid.UUID, uuid.UUID | None]] = Counter()
        for network_id in networks:
            assert names_of(network_id, "Created", "IpAllocated") == Counter(
                {"Network.Implemented": 1}
            ), (str(network_id), names_of(network_id), context())
            ips.update(
                (network_id, e.event.owner_id)
                for e in by_aggregate[network_id]
                if e.name == "Network.IpAllocated"
            )
        assert ips == Counter({(n, v): 1 for n in networks for v in vm_ids}), context()

        for vm_id in vm_ids:
            begun = 1 + starts[vm_id]  # the deploy's start and each start's
            expected = Counter(
                {
                    "VirtualMachine.Placed": 1,
                    "VirtualMachine.DiskAttached": 1,
                    "VirtualMachine.StartRequested": begun,
                    "VirtualMachine.Started": begun,
                    "VirtualMachine.StopRequested": stops[vm_id],
                    "VirtualMachine.Stopped": stops[vm_id],
                    "VirtualMachine.Rebooted": reboots[vm_id],
                    "VirtualMachine.RebootCompleted": reboots[vm_id],
                }
            )
            got = names_of(vm_id, "Created", "DriftObserved")
            assert +got == +expected, (str(vm_id), got, expected, context())
            answered(vm_id, "StartRequested", "Started")
            answered(vm_id, "StopRequested", "Stopped")
            answered(vm_id, "Rebooted", "RebootCompleted")
            assert reserved[vm_id] == begun and released[vm_id] == stops[vm_id], (
                str(vm_id),
                reserved[vm_id],
                released[vm_id],
                context(),
            )
            guard = guard_id(vm_id)
            assert names_of(guard, "Created") == Counter(
                {"ResourceGuard.Acquired": ops_on[vm_id], "ResourceGuard.Released": ops_on[vm_id]}
            ), (str(vm_id), names_of(guard), context())

        volumes = of_type(everything, Volume)
        assert len(volumes) == len(vm_ids), context()
        for volume in volumes:
            assert names_of(volume.id, "Created") == Counter(
                {
                    "Volume.CreationRequested": 1,
                    "Volume.CreationCompleted": 1,
                    "Volume.Attached": 1,
                }
            ), (str(volume.id), names_of(volume.id), context())
            answered(volume.id, "CreationRequested", "CreationCompleted")
            assert pooled[volume.id] == 1, (str(volume.id), context())
        assert sum(pooled.values()) == len(volumes), context()

        # The end state, from the log and from libvirt ------------------------
        loaded_vms = of_type(everything, VirtualMachine)
        assert {v.id for v in loaded_vms} == vms
        assert all(v.state == "Running" for v in loaded_vms), (
            {str(v.id): v.state for v in loaded_vms if v.state != "Running"},
            context(),
        )
        placed: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
        for vm in loaded_vms:
            assert vm.host_id is not None
            placed[vm.host_id].add(vm.id)
        for host in of_type(everything, Host):
            assert set(host.reservations) == placed[host.id], (host.name, context())
            assert host.cpus_used == SPEC.cpus * len(placed[host.id])
            assert host.ram_used_mb == SPEC.ram_mb * len(placed[host.id])
        assert all(placed[h] for h in fabric.hosts), ("a host got no VM", context())
        assert {p.id for p in of_type(everything, StoragePool)} == pools
        for pool in of_type(everything, StoragePool):
            mine = {v.id: v.size_bytes for v in volumes if v.pool_id == pool.id}
            assert dict(pool.reservations) == mine, (pool.name, context())
            assert pool.used_bytes == sum(mine.values())
        for volume in volumes:
            assert volume.state == "Attached" and volume.vm_id in vms, (str(volume.id), context())
        nics = of_type(everything, Nic)
        assert all(n.state != "Released" for n in nics)
        assert sorted(n.vm_id for n in nics) == sorted(v for v in vm_ids for _ in networks)
        addresses = of_type(everything, IpAddress)
        assert all(i.state == "Associated" and i.owner_id in vms for i in addresses)
        for network in of_type(everything, Network):  # Fabric's two unused
            held = {i.address: i.id for i in addresses if i.network_id == network.id}
            on_network = [n.address for n in nics if n.network_id == network.id]
            wanted = len(vm_ids) if network.id in networks else 0
            assert len(on_network) == len(set(on_network)) == wanted, network.name
            assert dict(network.allocated) == held and set(on_network) == set(held)

        wanted_domains = {names.domain(v): True for v in vm_ids}
        wanted_files = {names.volume(v.id) for v in volumes}
        await until(
            "libvirt to hold exactly the Running VMs' domains and volumes",
            lambda: (
                domains(hypervisor, names) == wanted_domains
                and volume_files(hypervisor, names) == wanted_files
            ),
            LIBVIRT_SETTLE_S,
        )

        # The survivor stops cleanly; its manager's consumer says what it got.
        engines[survivor].stop()
        running.discard(survivor)
        stopped = [
            line
            for line in consumer_lines(engines[survivor].log)
            if line.get("event") == "consumer stopped" and line.get("group") == groups[0]
        ]
        assert stopped and stopped[-1]["received"] > 0, (stopped, context())
        started = {
            name: [
                line["group"]
                for line in consumer_lines(engine.log)
                if line.get("event") == "consumer started"
            ]
            for name, engine in engines.items()
        }
        assert all(groups[0] in g for g in started.values()), (started, context())
        print(f"two engines: {len(op_ids)} operations in {took_s:.1f}s ({context()})")
    except BaseException:
        dump_log(store, tmp_path / "events.txt")
        print(f"two engines: failed ({context()}); the log is in {tmp_path / 'events.txt'}")
        raise
    finally:
        for engine in engines.values():
            engine.stop()
        await pipeline.close()
        client.close()
        await power_off(hypervisor, names)
