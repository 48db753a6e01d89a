"""tests/fabric.py, the fabric builder of the tests and benches, on an
in-memory unit of work: what a spec asks for is what gets built, and plan()
draws ids that the commands then make."""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.template import Template
from tests.fabric import (
    FabricSpec,
    HostSpec,
    ImageStoreSpec,
    NetworkSpec,
    PhysicalNetworkSpec,
    PoolSpec,
    TemplateSpec,
    build_with,
    hosts_on,
    plan,
)

SPEC = FabricSpec(
    hosts=(
        *hosts_on(["test:///a", "test:///b"]),
        HostSpec(name="u", underlay_address="192.0.2.7", underlay_device="eth1"),
    ),
    pools=(PoolSpec(), PoolSpec(name="local", scope="host", host=1)),
    image_stores=(ImageStoreSpec(url="/srv/images"),),
    physical_networks=(PhysicalNetworkSpec(),),
    templates=(TemplateSpec(), TemplateSpec(name="later", state="registered")),
    networks=(NetworkSpec(cidr="10.1.0.0/24", isolation="VXLAN", physical=True),),
)


def test_the_spec_is_what_gets_built() -> None:
    uow = InMemoryUnitOfWork()
    fabric = build_with(lambda command: dispatch(uow, command).aggregate_id, SPEC)

    hosts = [uow.get(Host, h) for h in fabric.hosts]
    assert [(h.name, h.libvirt_uri) for h in hosts[:2]] == [
        ("h0", "test:///a"),
        ("h1", "test:///b"),
    ]
    assert (hosts[2].underlay_address, hosts[2].underlay_device) == ("192.0.2.7", "eth1")
    shared, local = (uow.get(StoragePool, p) for p in fabric.pools)
    assert (shared.scope, shared.cluster_id) == ("cluster", fabric.cluster)
    assert (local.scope, local.host_id) == ("host", fabric.hosts[1])
    states = [uow.get(Template, t).state for t in fabric.templates]
    assert states == ["Ready", "Registered"]
    network = uow.get(Network, fabric.network)
    assert network.physical_network_id == fabric.physical_network


def test_plan_draws_the_ids_its_commands_make() -> None:
    commands, fabric = plan(SPEC)
    uow = InMemoryUnitOfWork()
    made: list[UUID] = [dispatch(uow, c).aggregate_id for c in commands]
    assert {fabric.zone, fabric.pod, fabric.cluster, *fabric.hosts, *fabric.pools} <= set(made)
    assert uow.get(Host, fabric.host).name == "h0"
