"""Every aggregate type survives a trip through PostgreSQL unchanged.

A scenario touching all fifteen aggregate types runs through the command
service; a second store then rebuilds each aggregate from its stored events
alone, and the rebuilt state must equal the live one.
"""

from __future__ import annotations

import pytest

from cloud_engine.engine.commands.compute import (
    CreateVm,
    MarkVmRunning,
    PlaceVm,
    RequestVmStart,
)
from cloud_engine.engine.commands.fabric import (
    AllocateTag,
    CreatePhysicalNetwork,
    ReserveHostCapacity,
    ReserveStorage,
)
from cloud_engine.engine.commands.network import (
    AllocateIp,
    CreateNetwork,
    CreateNetworkRule,
    CreateNic,
    PlugNic,
)
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag
from cloud_engine.engine.commands.storage import (
    AttachVolume,
    CreateSnapshot,
    CreateVolume,
    MarkVolumeCreated,
    RequestVolumeCreation,
)
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import (
    FabricSpec,
    HostSpec,
    ImageStoreSpec,
    NetworkSpec,
    PhysicalNetworkSpec,
    PoolSpec,
    TemplateSpec,
    build,
)

pytestmark = pytest.mark.postgres


def test_every_aggregate_type_round_trips(service: CommandService, pg_target):
    def run(command) -> object:
        return service.execute(command).aggregate_id

    made = build(
        service,
        FabricSpec(
            network_type="Basic",
            hosts=(
                HostSpec(
                    libvirt_uri="qemu:///system",
                    cpu_cores=8,
                    ram_mb=16384,
                    cpu_overcommit=2.0,
                    tags=("ssd", "gpu"),
                ),
            ),
            pools=(PoolSpec(name="pool", url="/srv/pool", capacity_bytes=10**12),),
            image_stores=(
                ImageStoreSpec(name="img", url="nfs://127.0.0.1/export", protocol="nfs"),
            ),
            physical_networks=(PhysicalNetworkSpec(name="pn", isolation="VLAN", tags=(10, 20)),),
            templates=(
                TemplateSpec(
                    name="t", url="http://127.0.0.1/t.qcow2", size_bytes=10**8, os_type="linux"
                ),
            ),
            networks=(
                NetworkSpec(
                    account="acct",
                    name="n",
                    cidr="192.168.10.0/24",
                    isolation="VLAN",
                    physical=True,
                ),
            ),
        ),
    )
    zone, pod, cluster, host, pool = made.zone, made.pod, made.cluster, made.host, made.pool
    image_store, physical, template = made.image_store, made.physical_network, made.template
    network = made.network
    run(AllocateNetworkTag(network_id=network))
    vm = run(
        CreateVm(
            account="acct",
            name="vm",
            zone_id=zone,
            template_id=template,
            spec=VmSpec(cpus=2, ram_mb=2048, root_disk_gb=10),
            network_ids=(network,),
        )
    )
    run(ReserveHostCapacity(host_id=host, vm_id=vm, cpus=2, ram_mb=2048))
    run(PlaceVm(vm_id=vm, host_id=host, pool_id=pool))
    run(RequestVmStart(vm_id=vm, host_id=host))
    run(MarkVmRunning(vm_id=vm))
    volume = run(CreateVolume(account="acct", name="data", zone_id=zone, size_bytes=10**9))
    run(ReserveStorage(pool_id=pool, volume_id=volume, size_bytes=10**9))
    run(RequestVolumeCreation(volume_id=volume, pool_id=pool))
    run(MarkVolumeCreated(volume_id=volume))
    run(AttachVolume(volume_id=volume, vm_id=vm, device_id=1))
    snapshot = run(CreateSnapshot(volume_id=volume, name="snap"))
    ip = run(AllocateIp(network_id=network, owner_id=vm))
    nic = run(CreateNic(vm_id=vm, network_id=network, device_id=0, ip_id=ip))
    run(PlugNic(nic_id=nic))
    # Rules need a network with a router, leaving through a public network.
    public = run(
        CreateNetwork(
            account="ops", name="public", zone_id=zone, cidr="100.64.9.0/24",
            isolation="none", purpose="public",
        )
    )  # fmt: skip
    routed = run(
        CreateNetwork(
            account="acct", name="routed", zone_id=zone, cidr="10.9.0.0/24",
            isolation="none", public_network_id=public,
        )
    )  # fmt: skip
    public_ip = run(AllocateIp(network_id=public, account="acct"))
    rule = run(
        CreateNetworkRule(
            network_id=routed,
            kind="firewall",
            protocol="tcp",
            source_cidr="0.0.0.0/0",
            start_port=22,
            public_ip_id=public_ip,
        )
    )
    other_pn = run(
        CreatePhysicalNetwork(
            zone_id=zone, name="pn2", isolation="VXLAN", tag_range=TagRange(first=1, last=9)
        )
    )
    run(AllocateTag(physical_network_id=other_pn, owner_id=network))

    ids = [
        zone,
        pod,
        cluster,
        host,
        pool,
        image_store,
        physical,
        template,
        network,
        vm,
        volume,
        snapshot,
        ip,
        nic,
        rule,
        other_pn,
    ]
    live = service._cache  # the service's in-memory state after the commands
    fresh_store = EventStore(pg_target)
    try:
        rebuilt = fresh_store.load_many(ids)
    finally:
        fresh_store.close()
    types = set()
    for aggregate_id in ids:
        live_aggregate = live.get(aggregate_id)
        assert live_aggregate is not None
        assert rebuilt[aggregate_id] == live_aggregate, type(live_aggregate).__name__
        types.add(type(live_aggregate).__name__)
    assert types == {
        "Zone",
        "Pod",
        "Cluster",
        "Host",
        "StoragePool",
        "ImageStore",
        "PhysicalNetwork",
        "Template",
        "Network",
        "VirtualMachine",
        "Volume",
        "Snapshot",
        "IpAddress",
        "Nic",
        "NetworkRule",
    }
