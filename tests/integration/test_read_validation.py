"""Read validation (docs/architecture.md, "Write path"): two command
services on one store (an API process beside an engine process) each decide
on current state even when the other changed what it only read (cached),
in the batched and the one-by-one path."""

import pytest

from cloud_engine.engine.commands.operations import DeployVm
from cloud_engine.engine.commands.storage import (
    DeactivateTemplate,
    MarkTemplateDownloaded,
    RequestTemplateDownload,
)
from cloud_engine.engine.errors import InvalidTransition
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import FabricSpec, PoolSpec, TemplateSpec, build
from tests.fabric import hosts as fabric_hosts

pytestmark = pytest.mark.postgres

SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
# Registered: the tests ask for its download themselves.
TEMPLATE = TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2", state="registered")


def deploy(zone, template, name: str) -> DeployVm:
    return DeployVm(account="a", name=name, zone_id=zone, template_id=template, spec=SPEC)


@pytest.mark.parametrize("batched", [False, True])
def test_a_read_changed_by_another_process_is_seen(store, batched):
    api, engine = CommandService(store), CommandService(store)
    try:
        fabric = build(api, FabricSpec(templates=(TEMPLATE,)))
        zone, template = fabric.zone, fabric.template
        api.execute(RequestTemplateDownload(template_id=template))  # api caches Downloading
        engine.execute(MarkTemplateDownloaded(template_id=template))  # engine caches Ready
        if batched:
            futures = [api.submit(deploy(zone, template, f"v{i}")) for i in range(20)]
            assert all(f.result(30).aggregate_id for f in futures)
        else:
            # Not refused on the stale Downloading the api cached.
            assert api.execute(deploy(zone, template, "first")).aggregate_id
        api.execute(DeactivateTemplate(template_id=template))
        with pytest.raises(InvalidTransition):
            # Not accepted on the stale Ready the engine cached.
            engine.execute(deploy(zone, template, "late"))
    finally:
        api.close()
        engine.close()


def test_a_placement_done_by_another_engine_while_loading_is_not_refused(store, pg_target):
    # Two engine instances place one deploy at once (one from Kafka, the
    # other from its sweep). Y loads the operation (still at place), then X
    # places it on host 0 and commits, then Y loads the pool, which already
    # holds the volume: on those mixed reads Y's placement was refused with a
    # Conflict, and the manager's FailOperation then compensated a deploy X
    # had placed correctly.
    from cloud_engine.engine.commands.operations import FailOperation, PlaceOperation
    from cloud_engine.engine.operations.operation import Operation
    from cloud_engine.engine.store import EventStore

    y_store = EventStore(pg_target)
    client, x, y = (
        CommandService(store),
        CommandService(EventStore(pg_target)),
        CommandService(y_store),
    )
    try:
        run = client.execute
        fabric = build(
            client,
            FabricSpec(
                hosts=fabric_hosts(2),
                pools=(PoolSpec(name="p", capacity_bytes=8 << 30),),
                templates=(TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2"),),
            ),
        )
        zone, hosts, pool, template = fabric.zone, fabric.hosts, fabric.pool, fabric.template
        op_id = run(deploy(zone, template, "vm")).aggregate_id

        original = y_store.load_many
        raced: list[bool] = []

        def load_many(ids):  # type: ignore[no-untyped-def]
            wanted = list(ids)
            if pool in wanted and not raced:
                raced.append(True)
                x.execute(PlaceOperation(operation_id=op_id, host_id=hosts[0], pool_ids=(pool,)))
            return original(wanted)

        y_store.load_many = load_many  # type: ignore[method-assign]
        y.execute(PlaceOperation(operation_id=op_id, host_id=hosts[1], pool_ids=(pool,)))
        assert raced, "the race did not happen: the test no longer exercises it"

        # What the manager sends when a placement is refused: about the place step only.
        y.execute(FailOperation(operation_id=op_id, reason="refused", step="place"))
        op = store.load(op_id)
        assert isinstance(op, Operation)
        assert (op.status, op.current_step, op.chosen_host_id) == ("running", "provision", None)
        assert op.error is None
    finally:
        for service in (client, x, y):
            service.close()
