"""A scenario that runs every command at least once, and so records every event type.

run_every_command() drives the commands through any `do(command)` that returns
something with .aggregate_id and .value (an Outcome from dispatch, or a
CommandResult from the command service), so the same scenario runs

- in memory (in_memory_scenario(): dispatch on an InMemoryUnitOfWork), for the
  schema tests in tests/unit/test_schemas.py, and
- on a real store (through_service(): CommandService.execute), for the bus
  contract tests in tests/integration/test_bus_contract.py.

Extend it when a command or event type is added; both test modules check that
it still covers every command and every event type.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.commands import CommandContext, dispatch
from cloud_engine.engine.commands.accounts import SetAccountLimits
from cloud_engine.engine.commands.compute import (
    CompleteVmMigration,
    CreateVm,
    DestroyVm,
    FailVm,
    FailVmExpunge,
    FailVmMedia,
    FailVmMigration,
    FailVmReboot,
    MarkVmExpunged,
    MarkVmMediaChanged,
    MarkVmRebooted,
    MarkVmRunning,
    MarkVmStopped,
    PlaceVm,
    RebootVm,
    RecordVmDrift,
    RecoverVm,
    RequestVmExpunge,
    RequestVmMigration,
    RequestVmStart,
    RequestVmStop,
)
from cloud_engine.engine.commands.ha import BeginHaRun, RecoverLateOnHa, ReportHaRun, RestartOnHa
from cloud_engine.engine.commands.hosts import (
    DeclareHostDown,
    DeclareHostUp,
    DisableHost,
    EnableHost,
    EnterHostMaintenance,
    ExitHostMaintenance,
    ReleaseHostCapacity,
    ReserveHostCapacity,
    UpdateHostOvercommit,
)
from cloud_engine.engine.commands.liveness import (
    ConfirmHostDown,
    ConvergeVm,
    DeclareHostAlive,
    RecordHostAnswered,
    RecordHostFenced,
    RecordSharedPoolUnavailable,
    RecordUnknownDomain,
    RecordVolumeDrift,
    RequestVmDomainStop,
    SuspectHost,
    UpdateVmHa,
)
from cloud_engine.engine.commands.maintenance import (
    CancelHostMaintenance,
    CancelStoragePoolMaintenance,
    HostOperation,
    MigrateOffHost,
    MoveOffPool,
    PoolOperation,
    ReportHostDrain,
    ReportPoolDrain,
)
from cloud_engine.engine.commands.network import (
    ActivateNetworkRule,
    AllocateIp,
    AssignNetworkTag,
    CreateNetwork,
    CreateNetworkRule,
    CreateNic,
    DestroyNetwork,
    FailNetworkRule,
    ImplementNetwork,
    MarkNetworkRuleRevoked,
    PlugNic,
    RecordNetworkRuleDrift,
    ReleaseIp,
    ReleaseNetworkTag,
    ReleaseNic,
    RevokeNetworkRule,
    ShutdownNetwork,
    UnplugNic,
)
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag, ReturnNetworkTag
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    DeployVm,
    FailOperation,
    PlaceOperation,
    VmOperation,
    VolumeOperation,
)
from cloud_engine.engine.commands.physical_networks import (
    AllocateTag,
    DisablePhysicalNetwork,
    EnablePhysicalNetwork,
    ReleaseTag,
)
from cloud_engine.engine.commands.storage import (
    AttachVolume,
    CreateSnapshot,
    CreateVolume,
    DeactivateTemplate,
    DestroySnapshot,
    DestroyVolume,
    DetachVolume,
    FailSnapshot,
    FailTemplate,
    FailVolume,
    FailVolumeMove,
    MarkSnapshotBackedUp,
    MarkSnapshotCreated,
    MarkTemplateDownloaded,
    MarkVolumeCreated,
    MarkVolumeMoved,
    MarkVolumeResized,
    MarkVolumeReverted,
    ReactivateTemplate,
    RegisterTemplate,
    RequestTemplateDownload,
    RequestVolumeCreation,
    RequestVolumeResize,
    RequestVolumeRevert,
)
from cloud_engine.engine.commands.storage_fabric import (
    CreateStoragePool,
    DisableImageStore,
    DisableStoragePool,
    EnableImageStore,
    EnableStoragePool,
    EnterStoragePoolMaintenance,
    ExitStoragePoolMaintenance,
    ReleaseStorage,
    ReserveStorage,
)
from cloud_engine.engine.commands.zones import (
    DisableCluster,
    DisablePod,
    DisableZone,
    EnableCluster,
    EnablePod,
    EnableZone,
)
from cloud_engine.engine.metadata import EventMeta, bound_meta
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import (
    FabricSpec,
    HostSpec,
    ImageStoreSpec,
    NetworkSpec,
    PhysicalNetworkSpec,
    PoolSpec,
    TemplateSpec,
    build_with,
)

GIB = 1 << 30

# The fabric the scenario runs on (built by tests/fabric.py through `do`).
FABRIC = FabricSpec(
    zone="zone-1",
    zone_description="first zone",
    pod="pod-1",
    cluster="cluster-1",
    hosts=(
        HostSpec(
            name="host-1",
            cpu_cores=16,
            cpu_mhz=2400,
            ram_mb=65536,
            libvirt_uri="qemu+tcp://10.0.0.11/system",
            tags=("ssd",),
        ),
        HostSpec(
            name="host-2", cpu_cores=16, ram_mb=65536, libvirt_uri="qemu+tcp://10.0.0.12/system"
        ),
    ),
    pools=(PoolSpec(name="pool-1", url="nfs://10.0.0.5/export", tags=("ssd",)),),
    image_stores=(ImageStoreSpec(name="images", url="nfs://10.0.0.6/images", protocol="nfs"),),
    physical_networks=(PhysicalNetworkSpec(name="physnet-1", isolation="VLAN", tags=(100, 199)),),
    templates=(
        TemplateSpec(
            name="ubuntu-24.04",
            url="https://images.example/ubuntu.qcow2",
            size_bytes=2 * GIB,
            os_type="Ubuntu",
            checksum="sha256:0123",
            state="registered",
        ),
    ),
    networks=(
        NetworkSpec(
            name="net-1",
            cidr="10.1.0.0/24",
            gateway="10.1.0.1",
            isolation="VLAN",
            physical=True,
        ),
    ),
)

# Who the scenario's events are recorded for (EventMeta in memory, CommandContext
# through the service): the same values either way.
ACTOR = "alice"
REQUEST_ID = "req-1"
CORRELATION_ID = "cor-1"


class Done(typing.Protocol):
    """What `do(command)` returns: an Outcome or a CommandResult."""

    @property
    def aggregate_id(self) -> UUID: ...

    @property
    def value(self) -> str | int | None: ...


class Scenario(typing.NamedTuple):
    commands: list
    events: list


def run_every_command(do: Callable[[typing.Any], Done]) -> None:
    """Every command once or more, in an order the state machines accept."""
    made = build_with(lambda command: do(command).aggregate_id, FABRIC)
    zone, pod, cluster = made.zone, made.pod, made.cluster
    host, other_host = made.hosts
    pool, store, physical = made.pool, made.image_store, made.physical_network
    template, network = made.template, made.network
    do(DisableZone(zone_id=zone))
    do(EnableZone(zone_id=zone))
    # Limits far above what the scenario uses: its VMs, volumes and IPs hold
    # and release their shares (account.held, account.released).
    do(SetAccountLimits(account="acme", vms=1000, volume_gb=100_000))
    do(DisablePod(pod_id=pod))
    do(EnablePod(pod_id=pod))
    do(DisableCluster(cluster_id=cluster))
    do(EnableCluster(cluster_id=cluster))

    do(DisableHost(host_id=host))
    do(EnableHost(host_id=host))
    do(EnterHostMaintenance(host_id=host))
    do(ExitHostMaintenance(host_id=host))
    # A drain blocked by a VM, cancelled; a drain that finds nothing to move.
    drain = do(HostOperation(kind="host.maintenance", host_id=host)).aggregate_id
    do(ReportHostDrain(operation_id=drain, remaining=1, blocked=("vm x: no host fits",)))
    do(CancelHostMaintenance(host_id=host))
    drain = do(HostOperation(kind="host.maintenance", host_id=host)).aggregate_id
    do(ReportHostDrain(operation_id=drain, remaining=0))
    do(ExitHostMaintenance(host_id=host))
    do(DeclareHostDown(host_id=host))
    do(DeclareHostUp(host_id=host))
    do(UpdateHostOvercommit(host_id=host, cpu_overcommit=2.0, ram_overcommit=1.5))
    do(SuspectHost(host_id=host, reason="libvirt unreachable"))
    do(RecordHostAnswered(host_id=host))
    do(SuspectHost(host_id=host, reason="libvirt unreachable"))
    do(ConfirmHostDown(host_id=host, reason="heartbeat stale"))
    do(RecordHostFenced(host_id=host, fencer="lab-power"))
    do(RecordHostAnswered(host_id=host))
    do(DeclareHostAlive(host_id=host))
    do(RecordUnknownDomain(host_id=host, domain_id=uuid4(), observed="running name=stray"))
    do(RecordSharedPoolUnavailable(host_id=host, pool_id=pool, observed="permission denied"))

    do(DisableStoragePool(pool_id=pool))
    do(EnableStoragePool(pool_id=pool))
    do(EnterStoragePoolMaintenance(pool_id=pool))
    do(ExitStoragePoolMaintenance(pool_id=pool))
    do(DisableImageStore(image_store_id=store))
    do(EnableImageStore(image_store_id=store))

    do(DisablePhysicalNetwork(physical_network_id=physical))
    do(EnablePhysicalNetwork(physical_network_id=physical))
    owner = uuid4()
    tag = do(AllocateTag(physical_network_id=physical, owner_id=owner)).value
    do(ReleaseTag(physical_network_id=physical, tag=tag, owner_id=owner))

    do(RequestTemplateDownload(template_id=template))
    do(FailTemplate(template_id=template, reason="mirror unreachable"))
    do(RequestTemplateDownload(template_id=template))
    do(MarkTemplateDownloaded(template_id=template))
    do(DeactivateTemplate(template_id=template))
    do(ReactivateTemplate(template_id=template))

    do(AllocateNetworkTag(network_id=network))  # an isolated network: now Implemented

    vm = do(
        CreateVm(
            account="acme",
            name="web-1",
            zone_id=zone,
            template_id=template,
            spec=VmSpec(cpus=2, ram_mb=2048, root_disk_gb=20),
            network_ids=(network,),
        )
    ).aggregate_id
    do(ReserveHostCapacity(host_id=host, vm_id=vm, cpus=2, ram_mb=2048))
    do(ReserveStorage(pool_id=pool, volume_id=vm, size_bytes=20 * GIB))

    ip = do(AllocateIp(network_id=network, owner_id=vm)).aggregate_id
    nic = do(CreateNic(vm_id=vm, network_id=network, device_id=0, ip_id=ip)).aggregate_id
    do(PlugNic(nic_id=nic))
    do(UnplugNic(nic_id=nic))
    do(ReleaseNic(nic_id=nic))
    do(ReleaseIp(ip_id=ip))

    # The zone's public network, a network with a router leaving through
    # it, a public IP of the account's and rules on it.
    public = do(
        CreateNetwork(
            account="ops",
            name="public",
            zone_id=zone,
            cidr="100.64.5.0/24",
            isolation="none",
            purpose="public",
        )
    ).aggregate_id
    routed = do(
        CreateNetwork(
            account="acme",
            name="net-r",
            zone_id=zone,
            cidr="10.3.0.0/24",
            isolation="none",
            public_network_id=public,
        )
    ).aggregate_id
    public_ip = do(AllocateIp(network_id=public, account="acme")).aggregate_id
    rule = do(
        CreateNetworkRule(
            network_id=routed,
            kind="firewall",
            protocol="tcp",
            source_cidr="0.0.0.0/0",
            start_port=22,
            end_port=22,
            public_ip_id=public_ip,
        )
    ).aggregate_id
    do(ActivateNetworkRule(network_rule_id=rule))
    do(RevokeNetworkRule(rule_id=rule))
    do(FailNetworkRule(network_rule_id=rule, reason="agent timeout"))
    do(RevokeNetworkRule(rule_id=rule))
    do(MarkNetworkRuleRevoked(network_rule_id=rule))
    forward = do(
        CreateNetworkRule(
            network_id=routed,
            kind="port_forwarding",
            protocol="tcp",
            start_port=8080,
            public_ip_id=public_ip,
            private_ip="10.3.0.5",
            private_port=80,
        )
    ).aggregate_id
    do(ActivateNetworkRule(network_rule_id=forward))
    do(RecordNetworkRuleDrift(network_rule_id=forward, detail="missing on its router: put back"))

    volume = do(
        CreateVolume(account="acme", name="data-1", zone_id=zone, size_bytes=10 * GIB)
    ).aggregate_id
    do(RequestVolumeCreation(volume_id=volume, pool_id=pool))
    do(MarkVolumeCreated(volume_id=volume))
    do(RecordVolumeDrift(volume_id=volume, observed="missing", expected="capacity=1"))
    do(RequestVolumeResize(volume_id=volume, new_size_bytes=20 * GIB))
    do(MarkVolumeResized(volume_id=volume))
    snapshot = do(CreateSnapshot(volume_id=volume, name="snap-1", kind="external")).aggregate_id
    do(MarkSnapshotCreated(snapshot_id=snapshot))
    do(MarkSnapshotBackedUp(snapshot_id=snapshot))
    do(RequestVolumeRevert(volume_id=volume, snapshot_id=snapshot))
    do(MarkVolumeReverted(volume_id=volume))
    failed_snapshot = do(CreateSnapshot(volume_id=volume, name="snap-2")).aggregate_id
    do(FailSnapshot(snapshot_id=failed_snapshot, reason="disk full"))
    do(DestroySnapshot(snapshot_id=failed_snapshot))
    do(AttachVolume(volume_id=volume, vm_id=vm, device_id=1))
    do(DetachVolume(volume_id=volume))
    broken = do(
        CreateVolume(account="acme", name="data-2", zone_id=zone, size_bytes=GIB)
    ).aggregate_id
    do(RequestVolumeCreation(volume_id=broken, pool_id=pool))
    do(FailVolume(volume_id=broken, reason="pool offline"))
    do(DestroyVolume(volume_id=broken))

    for command in [
        PlaceVm(vm_id=vm, host_id=host, pool_id=pool),
        RequestVmStart(vm_id=vm, host_id=host),
        MarkVmRunning(vm_id=vm),
        UpdateVmHa(vm_id=vm, ha=True, ha_priority=5),
        ConvergeVm(vm_id=vm, to="Stopped", reason="its domain was found shutoff"),
        ConvergeVm(vm_id=vm, to="Running", reason="its domain runs", host_id=host),
        RebootVm(vm_id=vm),
        MarkVmRebooted(vm_id=vm),
        RebootVm(vm_id=vm),
        FailVmReboot(vm_id=vm, reason="guest hung"),
        RecordVmDrift(vm_id=vm, observed="shutoff", expected="running"),
        RequestVmMigration(vm_id=vm, target_host_id=other_host),
        FailVmMigration(vm_id=vm, reason="link down"),
        RequestVmMigration(vm_id=vm, target_host_id=other_host),
        CompleteVmMigration(vm_id=vm),
        RequestVmStop(vm_id=vm, forced=True),
        MarkVmStopped(vm_id=vm),
        DestroyVm(vm_id=vm),
        RequestVmDomainStop(vm_id=vm, reason="its domain was found running"),
        RecoverVm(vm_id=vm),
        # Reserved by hand above, given back by hand: the failed start
        # below finds nothing left to give back.
        ReleaseHostCapacity(host_id=host, vm_id=vm),
        RequestVmStart(vm_id=vm, host_id=host),
        FailVm(vm_id=vm, reason="qemu crashed"),
        DestroyVm(vm_id=vm),
        RequestVmExpunge(vm_id=vm),
        FailVmExpunge(vm_id=vm, reason="domain busy"),
        RequestVmExpunge(vm_id=vm),
        MarkVmExpunged(vm_id=vm),
    ]:
        do(command)
    do(ReleaseStorage(pool_id=pool, volume_id=vm))

    # Operations: a deploy that succeeds, stop, a start refused by the planner,
    # and a deploy whose volume fails (compensated).
    spec = VmSpec(cpus=1, ram_mb=512, root_disk_gb=20)
    deploy = DeployVm(account="acme", name="op-1", zone_id=zone, template_id=template, spec=spec)
    done = do(deploy)
    op, deployed = done.aggregate_id, UUID(str(done.value))
    do(PlaceOperation(operation_id=op, host_id=host, pool_ids=(pool,)))
    do(MarkVolumeCreated(volume_id=deploy_ids.volume_id(op, 0)))
    do(AdvanceOperation(operation_id=op))
    do(MarkVmRunning(vm_id=deployed))
    do(AdvanceOperation(operation_id=op))
    stop = do(VmOperation(kind="vm.stop", vm_id=deployed)).aggregate_id
    do(MarkVmStopped(vm_id=deployed))
    do(AdvanceOperation(operation_id=stop))
    start = do(VmOperation(kind="vm.start", vm_id=deployed)).aggregate_id
    do(FailOperation(operation_id=start, reason="no host fits"))
    # A volume operation growing the pool reservation, and a start placed.
    root = deploy_ids.volume_id(done.aggregate_id, 0)
    grow = VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=21 * GIB)
    resize = do(grow).aggregate_id
    do(MarkVolumeResized(volume_id=root))
    do(AdvanceOperation(operation_id=resize))
    start = do(VmOperation(kind="vm.start", vm_id=deployed)).aggregate_id
    do(PlaceOperation(operation_id=start, host_id=host))
    do(MarkVmRunning(vm_id=deployed))
    do(AdvanceOperation(operation_id=start))
    # An ISO inserted in the running VM's CD-ROM drive, then an eject that failed.
    iso = do(
        RegisterTemplate(
            name="installer",
            zone_id=zone,
            url="https://images.example/installer.iso",
            format="iso",
            size_bytes=GIB,
            os_type="Debian",
            bootable=False,
        )
    ).aggregate_id
    do(RequestTemplateDownload(template_id=iso))
    do(MarkTemplateDownloaded(template_id=iso))
    attach = do(VmOperation(kind="vm.attach_iso", vm_id=deployed, iso_id=iso)).aggregate_id
    do(MarkVmMediaChanged(vm_id=deployed))
    do(AdvanceOperation(operation_id=attach))
    detach = do(VmOperation(kind="vm.detach_iso", vm_id=deployed)).aggregate_id
    do(FailVmMedia(vm_id=deployed, reason="the tray is locked"))
    do(AdvanceOperation(operation_id=detach))
    # A stop nobody answered in time: unsettled, converged to the running domain.
    stop = do(VmOperation(kind="vm.stop", vm_id=deployed)).aggregate_id
    do(FailOperation(operation_id=stop, reason="no answer in 600 s", timed_out=True))
    do(ConvergeVm(vm_id=deployed, to="Running", reason="its domain runs", host_id=host))
    # A stopped VM on a host's local pool migrated offline: a failed copy
    # (its disk stays), then a move.
    local = {
        on: do(
            CreateStoragePool(
                zone_id=zone,
                name=f"local-{n}",
                scope="host",
                host_id=on,
                capacity_bytes=100 * GIB,
                url=f"/var/lib/local-{n}",
            )
        ).aggregate_id
        for n, on in enumerate((host, other_host))
    }
    local_deploy = do(msgspec.structs.replace(deploy, name="op-3"))
    op, on_local = local_deploy.aggregate_id, UUID(str(local_deploy.value))
    do(PlaceOperation(operation_id=op, host_id=host, pool_ids=(local[host],)))
    do(MarkVolumeCreated(volume_id=deploy_ids.volume_id(op, 0)))
    do(AdvanceOperation(operation_id=op))
    do(MarkVmRunning(vm_id=on_local))
    do(AdvanceOperation(operation_id=op))
    stop = do(VmOperation(kind="vm.stop", vm_id=on_local)).aggregate_id
    do(MarkVmStopped(vm_id=on_local))
    do(AdvanceOperation(operation_id=stop))
    for outcome in (FailVmMigration(vm_id=on_local, reason="copy failed"), None):
        move = do(VmOperation(kind="vm.migrate", vm_id=on_local)).aggregate_id
        do(PlaceOperation(operation_id=move, host_id=other_host, pool_ids=(local[other_host],)))
        do(outcome or CompleteVmMigration(vm_id=on_local))
        do(AdvanceOperation(operation_id=move))
    # Scaled while stopped; its disk moved to the shared pool: a failed copy
    # (it stays), then a move.
    do(VmOperation(kind="vm.scale", vm_id=on_local, cpus=2, ram_mb=1024))
    local_root = deploy_ids.volume_id(op, 0)
    for moved in (FailVolumeMove(volume_id=local_root, reason="copy failed"), None):
        move = do(VolumeOperation(kind="volume.migrate", volume_id=local_root, pool_id=pool))
        do(moved or MarkVolumeMoved(volume_id=local_root))
        do(AdvanceOperation(operation_id=move.aggregate_id))
    # A drain of its host asks for its migration, which finds no room; cancelled.
    drain = do(HostOperation(kind="host.maintenance", host_id=other_host)).aggregate_id
    off = do(MigrateOffHost(operation_id=drain, vm_id=on_local)).aggregate_id
    do(FailOperation(operation_id=off, reason="no host fits"))
    do(CancelHostMaintenance(host_id=other_host))
    # Its disk's pool drained: its volume moved to the pool of the same
    # scope (the other host's local one is not), then the drain cancelled.
    shared = do(
        CreateStoragePool(
            zone_id=zone,
            cluster_id=cluster,
            name="shared-2",
            scope="cluster",
            capacity_bytes=100 * GIB,
            url="/var/lib/shared-2",
        )
    ).aggregate_id
    stop = do(VmOperation(kind="vm.stop", vm_id=deployed)).aggregate_id
    do(MarkVmStopped(vm_id=deployed))
    do(AdvanceOperation(operation_id=stop))
    drain = do(PoolOperation(kind="storage_pool.maintenance", pool_id=pool)).aggregate_id
    off = do(MoveOffPool(operation_id=drain, volume_id=local_root, pool_id=shared))
    do(ReportPoolDrain(operation_id=drain, remaining=1, blocked=("volume y: no room",)))
    do(MarkVolumeMoved(volume_id=local_root))
    do(AdvanceOperation(operation_id=off.aggregate_id))
    do(CancelStoragePoolMaintenance(pool_id=pool))
    failing = do(msgspec.structs.replace(deploy, name="op-2", affinity_group="grp"))
    op = failing.aggregate_id
    do(PlaceOperation(operation_id=op, host_id=host, pool_ids=(pool,)))
    do(FailVolume(volume_id=deploy_ids.volume_id(op, 0), reason="pool offline"))
    do(AdvanceOperation(operation_id=op))
    do(MarkVmExpunged(vm_id=UUID(str(failing.value))))
    do(AdvanceOperation(operation_id=op))

    # Tags by hand, and a tag handed back to the physical network.
    manual = do(
        CreateNetwork(
            account="acme",
            name="net-2",
            zone_id=zone,
            cidr="10.2.0.0/24",
            physical_network_id=physical,
        )
    ).aggregate_id
    do(AssignNetworkTag(network_id=manual, tag=300))
    do(ShutdownNetwork(network_id=manual))
    do(ImplementNetwork(network_id=manual))  # back up with the tag it kept
    do(ShutdownNetwork(network_id=manual))
    do(ReleaseNetworkTag(network_id=manual))
    do(DestroyNetwork(network_id=manual))
    do(ShutdownNetwork(network_id=network))
    do(ReturnNetworkTag(network_id=network))

    # The stopped VM's host dies: an HA run restarts it, finds no room.
    do(SuspectHost(host_id=host, reason="libvirt unreachable"))
    do(ConfirmHostDown(host_id=host, reason="heartbeat stale"))
    do(RecordHostFenced(host_id=host, fencer="lab-power"))
    ha = do(BeginHaRun(host_id=host, operation_id=uuid4(), vm_ids=(deployed,))).aggregate_id
    do(ReportHaRun(operation_id=ha, stage="recorded"))
    restart = do(RestartOnHa(operation_id=ha, vm_id=deployed)).aggregate_id
    do(ReportHaRun(operation_id=ha, stage="restarting", remaining=1))
    do(FailOperation(operation_id=restart, reason="no host fits"))
    do(ReportHaRun(operation_id=ha, stage="restarting", failed=(f"vm {deployed}: no host fits",)))
    # Then recorded Running on the fenced host (in life a live migration's
    # failure answered late): recorded Stopped and, HA-enabled, started again.
    do(UpdateVmHa(vm_id=deployed, ha=True))
    do(RequestVmStart(vm_id=deployed, host_id=host))
    do(MarkVmRunning(vm_id=deployed))
    late = do(RecoverLateOnHa(operation_id=ha, vm_id=deployed, reason="host down and fenced"))
    # That start finds no room; started by hand, the VM's domain is then
    # found off: recorded Stopped and, HA-enabled, started again at once.
    do(FailOperation(operation_id=UUID(str(late.value)), reason="no host fits"))
    do(RequestVmStart(vm_id=deployed, host_id=host))
    do(MarkVmRunning(vm_id=deployed))
    do(
        ConvergeVm(
            vm_id=deployed, to="Stopped", reason="its domain was found shutoff", restart_if_ha=True
        )
    )


@functools.cache
def in_memory_scenario() -> Scenario:
    """The scenario through each command's handler on an InMemoryUnitOfWork."""
    uow = InMemoryUnitOfWork()
    commands = []

    def do(command):
        commands.append(command)
        return dispatch(uow, command)

    meta = EventMeta(actor=ACTOR, request_id=REQUEST_ID, correlation_id=CORRELATION_ID)
    with bound_meta(meta):
        run_every_command(do)
    return Scenario(commands=commands, events=uow.commit())


def through_service(service: CommandService, timeout: float = 30.0) -> list:
    """The scenario through a real CommandService, one command at a time (each
    waits for the previous one to commit). Returns the commands it ran."""
    context = CommandContext(actor=ACTOR, request_id=REQUEST_ID, correlation_id=CORRELATION_ID)
    commands = []

    def do(command):
        commands.append(command)
        return service.execute(command, context, timeout=timeout)

    run_every_command(do)
    return commands
