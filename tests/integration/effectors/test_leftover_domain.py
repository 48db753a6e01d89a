"""A destroyed VM whose domain keeps running is stopped again, on real
PostgreSQL, the dev broker and qemu:///system.

vm.destroy is done at once: the VM is recorded Destroyed and its host's
capacity released, and the effector stops the domain from the
`vm.destroyed` event, with nothing recorded either way. Here that work is
lost: the effector is stopped when the VM is destroyed, and its consumer
group's offset is moved past the event (as a failed or lost destroy leaves
it: the domain runs, the log says it must not). The effector comes back, its
reconciler reports the domain running every round (`vm.drift_observed`),
and convergence, once the destroy is older than its grace, asks the engine
for `vm.domain_stop_requested`, which the effector carries out: the domain
is shut off, the VM stays Destroyed. Then the same VM expunged, and its
domain defined again by hand (a definition left behind): convergence asks
again and the effector undefines it.

Without convergence's rule the domain runs on (the wait for it to stop
times out). A destroyed VM's paused domain is powered off the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import libvirt
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from effector_pipeline import (
    domains_with_uuid,
    finish,
    is_running,
    read_topic,
    wait_for,
)
from test_unsettled import deployed, held_by, vm_of

from cloud_engine.bus.naming import topic_for
from cloud_engine.effectors.service import effector_config
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.engine.store import EventStore

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

# Short, so the test does not wait long; the destroy is older than it by the
# time the effector is back.
GRACE_S = 2.0


def drifts(store: EventStore, vm_id: uuid.UUID) -> list[tuple[str, str]]:
    return [
        (e.observed, e.expected)  # type: ignore[attr-defined]
        for e in store.events_of(vm_id)
        if type(e).__name__ == "DriftObserved"
    ]


def stop_requests(store: EventStore, vm_id: uuid.UUID) -> list[tuple[str, str]]:
    return [
        (e.meta.actor, e.reason)  # type: ignore[attr-defined]
        for e in store.events_of(vm_id)
        if type(e).__name__ == "DomainStopRequested"
    ]


async def lose_effector_work(broker: str, prefix: str, vm_id: uuid.UUID, ce_type: str) -> None:
    """Move the effectors' consumer group past the VM's event of ce_type:
    the work it asks for is never done."""
    topic = topic_for(prefix, "vm")

    def found(records: list) -> bool:
        return any(
            dict(r.headers).get("ce_type") == ce_type.encode()
            and dict(r.headers).get("ce_subject") == str(vm_id).encode()
            for r in records
        )

    records = await read_topic(broker, topic, found)
    (record,) = [
        r
        for r in records
        if dict(r.headers).get("ce_type") == ce_type.encode()
        and dict(r.headers).get("ce_subject") == str(vm_id).encode()
    ]
    # A member of the group (its last generation is the stopped effector's).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        group_id=effector_config(broker, prefix).group_id,
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, record.partition)
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while partition not in consumer.assignment():
            assert time.monotonic() < deadline, "the effectors' group assigned nothing"
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({partition: record.offset + 1})
    finally:
        await consumer.stop()


async def test_a_destroyed_vm_s_running_domain_is_stopped_again(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    # The manager's usual step deadline: nothing here waits on a timeout.
    async with deployed(
        service, store, broker, topic_prefix, pg_target, libvirt_uri, name_prefix, tmp_path,
        served, name="leftover", step_deadline_s=600.0, stop_grace_s=GRACE_S,
    ) as w:  # fmt: skip
        pipeline, effector, vm_id = w.pipeline, w.effector, w.vm_id
        host_id = vm_of(store, vm_id).host_id
        assert host_id is not None and is_running(hypervisor, vm_id)

        # Destroyed while the effector is away, and its work lost.
        await effector.stop()
        destroyed = await service.execute_async(VmOperation(kind="vm.destroy", vm_id=vm_id))
        assert (await finish(pipeline, store, destroyed.aggregate_id)).status == "succeeded"
        assert vm_of(store, vm_id).state == "Destroyed"
        assert not held_by(store, host_id, vm_id)  # its capacity released at once
        await lose_effector_work(broker, topic_prefix, vm_id, "io.cloudengine.vm.destroyed.v1")
        effector.start()

        # The gap: the domain runs on, reported as drift.
        await wait_for("the running domain reported", lambda: drifts(store, vm_id) != [], pipeline)
        assert drifts(store, vm_id)[0] == ("running", "shutoff")
        # Convergence asks again; the effector stops it; the VM stays Destroyed.
        await wait_for("the domain stopped", lambda: not is_running(hypervisor, vm_id), pipeline)
        actor, reason = stop_requests(store, vm_id)[0]
        assert actor == "automation:convergence"
        assert "found running" in reason and "power it off" in reason, reason
        vm = vm_of(store, vm_id)
        assert (vm.state, vm.host_id, vm.last_host_id) == ("Destroyed", None, host_id)
        assert not held_by(store, host_id, vm_id)
        assert len(domains_with_uuid(hypervisor, vm_id)) == 1  # still defined: recoverable

        # Expunged, and then its definition is back (left behind on the
        # host): convergence asks again, the effector undefines it.
        (domain,) = domains_with_uuid(hypervisor, vm_id)
        xml = await asyncio.to_thread(domain.XMLDesc, 0)
        expunged = await service.execute_async(VmOperation(kind="vm.expunge", vm_id=vm_id))
        assert (await finish(pipeline, store, expunged.aggregate_id)).status == "succeeded"
        assert domains_with_uuid(hypervisor, vm_id) == []
        asked = len(stop_requests(store, vm_id))
        await asyncio.to_thread(hypervisor.conn.defineXML, xml)
        await wait_for(
            "the left-behind domain undefined",
            lambda: (
                len(stop_requests(store, vm_id)) > asked
                and domains_with_uuid(hypervisor, vm_id) == []
            ),
            pipeline,
        )
        assert "undefine" in stop_requests(store, vm_id)[-1][1]
        assert vm_of(store, vm_id).state == "Expunged"


async def test_a_destroyed_vm_s_paused_domain_is_powered_off(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    # A paused leftover holds the memory the destroy gave back as a running
    # one does. Before, convergence left it alone (reported nothing).
    async with deployed(
        service, store, broker, topic_prefix, pg_target, libvirt_uri, name_prefix, tmp_path,
        served, name="paused", step_deadline_s=600.0, stop_grace_s=GRACE_S,
    ) as w:  # fmt: skip
        pipeline, vm_id = w.pipeline, w.vm_id
        destroyed = await service.execute_async(VmOperation(kind="vm.destroy", vm_id=vm_id))
        assert (await finish(pipeline, store, destroyed.aggregate_id)).status == "succeeded"
        await wait_for("the domain stopped", lambda: not is_running(hypervisor, vm_id), pipeline)
        assert stop_requests(store, vm_id) == []

        # Started again by hand, paused at once.
        (domain,) = domains_with_uuid(hypervisor, vm_id)
        await asyncio.to_thread(domain.createWithFlags, libvirt.VIR_DOMAIN_START_PAUSED)
        await wait_for(
            "the paused domain powered off",
            lambda: stop_requests(store, vm_id) != [] and not domain.isActive(),
            pipeline,
        )
        assert ("paused", "shutoff") in drifts(store, vm_id)
        actor, reason = stop_requests(store, vm_id)[0]
        assert actor == "automation:convergence" and "found paused" in reason, reason
        assert vm_of(store, vm_id).state == "Destroyed"
