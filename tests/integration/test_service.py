"""The command service on a real PostgreSQL: results, idempotency, conflicts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from uuid import UUID

import pytest

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.fabric import CreateZone, DisableZone, EnableZone
from cloud_engine.engine.commands.operations import DeployVm
from cloud_engine.engine.errors import Conflict, InvalidTransition, NotFound
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import FabricSpec, TemplateSpec, build

pytestmark = pytest.mark.postgres


def test_result_carries_versions_and_position(service: CommandService, store: EventStore):
    created = service.execute(CreateZone(name="z1"))
    disabled = service.execute(DisableZone(zone_id=created.aggregate_id))
    assert created.versions[0].version == 1 and created.versions[0].type == "Zone"
    assert disabled.versions[0].version == 2
    assert created.position is not None and disabled.position is not None
    assert disabled.position > created.position
    assert store.max_position() == disabled.position


def test_context_becomes_event_metadata(service: CommandService, store: EventStore):
    ctx = CommandContext(actor="ops", request_id="req-7", correlation_id="corr-1", causation_id="c")
    result = service.execute(CreateZone(name="z1"), ctx)
    (event,) = store.events_of(result.aggregate_id)
    assert event.meta.actor == "ops"  # type: ignore[attr-defined]
    assert event.meta.request_id == "req-7"  # type: ignore[attr-defined]
    assert event.meta.correlation_id == "corr-1"  # type: ignore[attr-defined]
    assert event.meta.causation_id == "c"  # type: ignore[attr-defined]


def test_refused_command_raises_typed_error_and_stores_nothing(service, store):
    created = service.execute(CreateZone(name="z1"))
    before = store.max_position()
    with pytest.raises(InvalidTransition):
        service.execute(EnableZone(zone_id=created.aggregate_id))
    with pytest.raises(NotFound):
        service.execute(DisableZone(zone_id=uuid.uuid4()))
    assert store.max_position() == before


def test_idempotency_key_replays_first_result_and_stores_nothing_new(service, store):
    ctx = CommandContext(actor="alice", idempotency_key="create-z1")
    first = service.execute(CreateZone(name="z1"), ctx)
    position = store.max_position()
    again = service.execute(CreateZone(name="z1"), ctx)
    assert again.replayed and not first.replayed
    assert msgspec_equal_but_replayed(first, again)
    assert store.max_position() == position


def test_idempotency_key_with_other_command_is_conflict(service, store):
    ctx = CommandContext(actor="alice", idempotency_key="k")
    service.execute(CreateZone(name="z1"), ctx)
    position = store.max_position()
    with pytest.raises(Conflict) as info:
        service.execute(CreateZone(name="z2"), ctx)
    assert "Idempotency-Key" in str(info.value)
    assert store.max_position() == position


def test_idempotency_keys_are_scoped_per_actor(service):
    a = service.execute(CreateZone(name="z"), CommandContext(actor="a", idempotency_key="k"))
    b = service.execute(CreateZone(name="z"), CommandContext(actor="b", idempotency_key="k"))
    assert a.aggregate_id != b.aggregate_id and not b.replayed


def test_idempotency_survives_restart_and_other_instances(store, pg_target):
    first_service = CommandService(store)
    ctx = CommandContext(actor="alice", idempotency_key="k-restart")
    first = first_service.execute(CreateZone(name="z"), ctx)
    first_service.close()
    other_store = EventStore(pg_target)
    other = CommandService(other_store)
    try:
        again = other.execute(CreateZone(name="z"), ctx)
        assert again.replayed and again.aggregate_id == first.aggregate_id
        assert again.position == first.position
    finally:
        other.close()
        other_store.close()


def test_same_key_in_one_batch_executes_once(service, store):
    ctx = CommandContext(actor="alice", idempotency_key="dup")
    futures = [service.submit(CreateZone(name="z"), ctx) for _ in range(20)]
    results = [f.result(10) for f in futures]
    assert len({r.aggregate_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert store.max_position() == 1


def test_group_commit_refuses_one_without_failing_others(service, store):
    zone = service.execute(CreateZone(name="z")).aggregate_id
    futures = [service.submit(CreateZone(name=f"n{i}")) for i in range(50)]
    futures.append(service.submit(DisableZone(zone_id=zone)))
    futures.append(service.submit(DisableZone(zone_id=zone)))  # refused: already disabled
    futures += [service.submit(CreateZone(name=f"m{i}")) for i in range(50)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(10))
        except InvalidTransition as e:
            outcomes.append(e)
    assert sum(isinstance(o, InvalidTransition) for o in outcomes) == 1
    assert store.max_position() == 1 + 100 + 1


def test_stale_cache_conflict_is_retried_against_fresh_state(store, pg_target):
    other_store = EventStore(pg_target)
    a, b = CommandService(store), CommandService(other_store)
    try:
        zone_id = a.execute(CreateZone(name="z")).aggregate_id
        b.execute(DisableZone(zone_id=zone_id))
        # a's cached zone is still Enabled; its commit conflicts, the retry
        # reloads and the command is judged against the real state.
        with pytest.raises(InvalidTransition):
            a.execute(DisableZone(zone_id=zone_id))
        a.execute(EnableZone(zone_id=zone_id))
        zone = store.load(zone_id)
        assert isinstance(zone, Zone) and zone.state == "Enabled" and zone.version == 3
        assert a.stats["retries"] >= 1
    finally:
        a.close()
        b.close()
        other_store.close()


def test_duplicate_chosen_id_is_conflict(service):
    zone_id = uuid.uuid4()
    service.execute(CreateZone(name="z", id=zone_id))
    with pytest.raises(Conflict):
        service.execute(CreateZone(name="z again", id=zone_id))


def msgspec_equal_but_replayed(first, again) -> bool:
    import msgspec

    return msgspec.structs.replace(again, replayed=False) == first


def test_conflict_after_bounded_retries(store, pg_target):
    other_store = EventStore(pg_target)
    stale, writer = CommandService(store, max_retries=0), CommandService(other_store)
    try:
        zone_id = stale.execute(CreateZone(name="z")).aggregate_id
        writer.execute(DisableZone(zone_id=zone_id))
        before = store.max_position()
        with pytest.raises(Conflict) as info:
            stale.execute(DisableZone(zone_id=zone_id))
        assert "retries" in str(info.value)
        assert store.max_position() == before
    finally:
        stale.close()
        writer.close()
        other_store.close()


def test_large_batches_are_split_into_small_transactions(store):
    big = CommandService(store, batch_max=5000)
    try:
        futures = [big.submit(CreateZone(name=f"z{i}")) for i in range(3000)]
        positions = [f.result(60).position for f in futures]
        assert len(set(positions)) == 3000
        assert store.max_position() == 3000
        assert big.stats["batches"] >= 3  # at most ~1,000 events per transaction
    finally:
        big.close()


def test_store_refuses_an_oversized_transaction_instead_of_hanging(store):
    events = []
    for i in range(2001):
        events += Zone.create(f"z{i}").collect_events()
    with pytest.raises(ValueError, match="at most"):
        store.append(events)
    assert store.max_position() == 0


def test_a_cancelled_wait_drops_its_command_and_answers_the_rest(service, store):
    from cloud_engine.engine.submission import Submission

    batch = [Submission(CreateZone(name=f"c-{i}"), CommandContext()) for i in range(5)]
    assert batch[2].future.cancel()  # its caller gave up before the writer took it
    before = store.max_position()
    service._process(batch)  # as the writer thread would, with this batch
    answered = [s.future.result(5) for i, s in enumerate(batch) if i != 2]
    assert len({r.aggregate_id for r in answered}) == 4
    assert batch[2].future.cancelled()
    assert store.max_position() == before + 4  # the cancelled one stored nothing


SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)


def test_deploys_of_new_vms_load_nothing_one_at_a_time(store: EventStore) -> None:
    # A new VM's id, its deploy operation's and its guard's come from a uuid4
    # the handler drew: asking the store for each (one round trip apiece,
    # serial in the writer thread) was most of a deploy's cost.
    service = CommandService(store)
    try:
        fabric = build(
            service, FabricSpec(templates=(TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2"),))
        )
        zone, template = fabric.zone, fabric.template
        loads: list[int] = []
        real = store.load_many

        def counting(ids: Iterable[UUID]) -> dict[UUID, Aggregate]:
            wanted = list(ids)
            loads.append(len(wanted))
            return real(wanted)

        store.load_many = counting  # type: ignore[method-assign]

        def deploy(i: int) -> DeployVm:
            name = f"v{i}"
            return DeployVm(account="a", name=name, zone_id=zone, template_id=template, spec=SPEC)

        one_by_one = [service.execute(deploy(i)) for i in range(5)]
        # Zone and template come from the cache; the new ids are not asked
        # for. The account's aggregate (its quota usage) is, once: then cached.
        assert loads == [1], loads

        batches = service.stats["batches"]
        futures = [service.submit(deploy(i)) for i in range(5, 105)]
        batched = [f.result(30) for f in futures]
        # At most one prefetch per batch (the guards of what the commands
        # name), never a load per command.
        assert len(loads) <= service.stats["batches"] - batches < len(futures), loads

        ops = [store.load(r.aggregate_id) for r in one_by_one + batched]
        assert all(isinstance(op, Operation) and op.kind == "vm.deploy" for op in ops)
        assert len({op.resource_id for op in ops if isinstance(op, Operation)}) == 105
    finally:
        service.close()


def test_observers_see_every_batch_and_a_failing_one_stops_nothing(store: EventStore) -> None:
    from concurrent.futures import wait

    from cloud_engine.engine.service import WriterBatch

    seen: list[WriterBatch] = []

    def broken(_batch: WriterBatch) -> None:
        raise RuntimeError("a watcher's bug")

    service = CommandService(store)
    try:
        service.observe(broken)
        stop = service.observe(seen.append)
        futures = [service.submit(CreateZone(name=f"o-{i}")) for i in range(20)]
        wait(futures, timeout=30)
        assert all(f.result() is not None for f in futures)  # the broken watcher stopped nothing
        # Observers hear of a batch after its callers were answered.
        deadline = time.monotonic() + 10
        while sum(b.commands for b in seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(b.commands for b in seen) == 20
        assert all(len(b.waits) == b.commands and b.seconds > 0 for b in seen)
        assert all(w >= 0 for b in seen for w in b.waits)
        stop()
        count = len(seen)
        service.execute(CreateZone(name="after"))
        service.close()  # the writer is done: any call to observers happened
        assert len(seen) == count  # stopped: told nothing more
    finally:
        service.close()
