"""A live migration whose step timed out is unsettled between its two hosts:
convergence records it Running on the destination when the destination
reports it running, and judges it by the destination's liveness, not the
source's (automation/convergence.py behind fakes)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

from cloud_engine.automation.convergence import Converger
from cloud_engine.bus.consumer import ConsumerConfig
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from tests.unit.support import make_host


class Fakes:
    """The store and the command service the converger uses."""

    def __init__(self, *aggregates: Any) -> None:
        self.aggregates = {a.id: a for a in aggregates}
        self.sent: list[Any] = []

    def load(self, aggregate_id: UUID) -> Any:
        return self.aggregates.get(aggregate_id)

    def events_of(self, aggregate_id: UUID) -> list[Any]:
        return []

    async def execute_async(self, command: Any, context: Any) -> None:
        self.sent.append(command)


def unsettled(source: Host, target: Host) -> VirtualMachine:
    vm = VirtualMachine.create(
        "acme", "web", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    vm.place(source.id, uuid4())
    vm.start_requested(source.id)
    vm.mark_running()
    vm.migrate_requested(target.id)
    vm.timed_out("step migrate of vm.migrate got no answer within 60 s")
    return vm


def decide(fakes: Fakes, vm: VirtualMachine, observed: str) -> list[Any]:
    converger = Converger(
        fakes,  # type: ignore[arg-type]
        fakes,  # type: ignore[arg-type]
        ConsumerConfig(bootstrap="unused:9092", group_id="g", topics=[]),
    )
    asyncio.run(converger.decide(vm, observed))
    return fakes.sent


def test_the_destination_running_it_settles_it_there() -> None:
    source, target = make_host(name="h1"), make_host(name="h2")
    vm = unsettled(source, target)
    assert vm.is_unsettled_migration()
    (sent,) = decide(Fakes(vm, source, target), vm, "running")
    assert isinstance(sent, ConvergeVm)
    assert (sent.to, sent.host_id, sent.expected_version) == ("Running", target.id, vm.version)
    assert "h2" in sent.reason


def test_a_destination_not_up_leaves_it_to_ha() -> None:
    source, target = make_host(name="h1"), make_host(name="h2")
    vm = unsettled(source, target)
    target.suspect("libvirt unreachable")
    assert decide(Fakes(vm, source, target), vm, "running") == []
