"""Carries out one work item on a host through the drivers (blocking; the
service runs it in a thread).

Every step observes before it acts (the drivers are idempotent), so a work
item delivered again, or resumed after the effector was killed half-way,
does what is left and reports the same outcome. A failure becomes a failed
result carrying libvirt's error; nothing is swallowed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
import structlog

from effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from effectors.compute.spec import DiskSpec, DomainSpec, DomainState, NicSpec
from effectors.desired import (
    HostView,
    ImageStoreView,
    NetworkView,
    NicView,
    PoolView,
    TemplateView,
    VmView,
    VolumeView,
)
from effectors.hypervisor import Hypervisor, HypervisorError
from effectors.naming import Names
from effectors.network.driver import NetworkDriver, NetworkDriverError
from effectors.network.spec import DhcpHost, NetworkSpec, VxlanSpec
from effectors.results import EffectorResult
from effectors.storage.pools import StorageError, ensure_pool
from effectors.storage.spec import PoolSpec, VolumeSpec
from effectors.storage.templates import TemplateImage, fetch, image_path, store_dir
from effectors.storage.volumes import StorageDriver
from effectors.work import WorkItem

log = structlog.get_logger("effectors.executor")

# Fault injection for the crash tests: "after-define:<seconds>" sleeps between
# defining and starting a domain, so a test can kill the process there.
FAULT_ENV = "CLOUD_ENGINE_EFFECTOR_FAULT"


class Unsupported(Exception):
    """The work cannot be done by this effector (e.g. a pool kind)."""


def pool_spec(names: Names, pool: PoolView) -> PoolSpec:
    parts = urlsplit(pool.url)
    if pool.url.startswith("/"):
        path = pool.url
    elif parts.scheme == "file":
        path = parts.path
    else:
        raise Unsupported(f"storage pool {pool.id}: {parts.scheme}:// pools are not served yet")
    return PoolSpec(name=names.pool(pool.id), kind="dir", path=path)


class Uplink(msgspec.Struct, frozen=True, kw_only=True):
    """How this effector's hosts reach each other for isolated networks: the
    underlay device and address, and the other hosts' VTEP addresses (VXLAN
    flood list). Without one, VLAN and VXLAN networks are realised as
    host-local isolated bridges (VMs on one host only)."""

    device: str
    local_ip: str
    peers: tuple[str, ...] = ()


def network_spec(names: Names, network: NetworkView, uplink: Uplink | None = None) -> NetworkSpec:
    isolation = network.isolation.lower()  # the engine says VLAN / VXLAN / none
    if isolation not in ("none", "vlan", "vxlan"):
        raise Unsupported(f"network {network.id}: unknown isolation {network.isolation}")
    base = NetworkSpec(
        name=names.network(network.id),
        bridge=names.bridge(network.id),
        cidr=network.cidr,
        gateway=network.gateway,
    )
    if isolation == "none" or uplink is None:
        return base
    if network.tag is None:
        raise Unsupported(f"{network.isolation} network {network.id} has no tag yet")
    if isolation == "vlan":
        return msgspec.structs.replace(base, isolation="vlan", vlan=network.tag)
    vxlan = VxlanSpec(
        vni=network.tag,
        local_ip=uplink.local_ip,
        underlay_dev=uplink.device,
        remote_ips=tuple(p for p in uplink.peers if p != uplink.local_ip),
    )
    # 50 bytes of VXLAN headers come out of the underlay's 1500.
    return msgspec.structs.replace(base, isolation="vxlan", vxlan=vxlan, mtu=1450)


class VmPlan(msgspec.Struct, frozen=True):
    """Everything a VM's domain needs, read from the read models."""

    vm: VmView
    host: HostView
    disks: tuple[tuple[VolumeView, PoolView], ...] = ()
    nics: tuple[tuple[NicView, NetworkView], ...] = ()
    destination: HostView | None = None  # vm.migrate: the target host


class TemplateSource(msgspec.Struct, frozen=True):
    """A template and the image store it is fetched into."""

    template: TemplateView
    store: ImageStoreView | None

    def fetch(self) -> TemplateImage:
        t, store = self.template, self.store
        if store is None:
            raise Unsupported(f"zone {t.zone_id} has no enabled image store for template {t.id}")
        if store.protocol != "file":
            raise Unsupported(f"image store {store.id}: {store.protocol} stores are not served yet")
        dest = image_path(store_dir(store.url), t.id, t.format)
        return fetch(t.url, dest, fmt=t.format, checksum=t.checksum)


class Executor:
    def __init__(
        self,
        effector: str,
        *,
        names: Names | None = None,
        stop_timeout_s: float = 30.0,
        uplink: Uplink | None = None,
    ) -> None:
        self.effector = effector
        self.uplink = uplink
        self.names = names or Names()
        self.stop_timeout_s = stop_timeout_s
        self._hypervisors: dict[str, Hypervisor] = {}

    def hypervisor(self, uri: str) -> Hypervisor:
        hv = self._hypervisors.get(uri)
        if hv is None:
            # Worker threads ask at once: one Hypervisor (one connection) per
            # URI, whoever gets here first.
            hv = self._hypervisors.setdefault(uri, Hypervisor(uri))
        return hv

    def close(self) -> None:
        for hv in list(self._hypervisors.values()):
            hv.close()

    def _result(
        self, item: WorkItem, host_id: UUID | None, observed: str | None, error: Exception | None
    ) -> EffectorResult:
        code = error.code if isinstance(error, HypervisorError) else None
        return EffectorResult(
            operation_id=item.operation_id,
            kind=item.kind,
            aggregate_id=item.aggregate_id,
            version=item.version,
            outcome="failed" if error is not None else "succeeded",
            host_id=host_id,
            observed=observed,
            error=None if error is None else str(error),
            error_code=code,
            effector=self.effector,
            correlation_id=item.correlation_id,
        )

    # VMs ----------------------------------------------------------------------

    def run_vm(self, item: WorkItem, plan: VmPlan) -> EffectorResult:
        compute = ComputeDriver(self.hypervisor(plan.host.libvirt_uri))
        vm_id = plan.vm.id
        try:
            if item.kind == "vm.start":
                self._realise_networks(plan)
                self._ensure_volumes_exist(plan)
                compute.define(self._domain_spec(plan))
                self._fault("after-define")
                state = compute.start(vm_id).state
            elif item.kind == "vm.stop":
                state = compute.stop(vm_id, timeout_s=self.stop_timeout_s, force=item.forced).state
            elif item.kind == "vm.reboot":
                state = compute.reboot(vm_id).state
            elif item.kind == "vm.destroy":
                state = compute.destroy(vm_id).state
            elif item.kind == "vm.expunge":
                state = compute.undefine(vm_id).state
            elif item.kind == "vm.migrate":
                state = self._migrate(compute, plan)
            else:
                raise Unsupported(f"{item.kind} is not VM work")
        except (
            HypervisorError,
            DomainMissing,
            DomainNotRunning,
            Unsupported,
            StorageError,
            NetworkDriverError,
            ValueError,
        ) as e:
            log.warning("work_failed", kind=item.kind, vm_id=str(vm_id), error=str(e))
            return self._result(item, plan.host.id, None, e)
        return self._result(item, plan.host.id, state.state, None)

    def _migrate(self, compute: ComputeDriver, plan: VmPlan) -> DomainState:
        target = plan.destination
        if target is None:
            raise Unsupported(f"vm {plan.vm.id} has no migration target")
        destination = msgspec.structs.replace(plan, host=target, destination=None)
        self._realise_networks(destination)
        if target.libvirt_uri == plan.host.libvirt_uri:
            # Two engine hosts on one hypervisor (a lab or demo fabric): the
            # domain already runs "there"; libvirt refuses a migration to itself.
            observed = compute.observe(plan.vm.id)
            if observed.state != "running":
                raise DomainNotRunning(plan.vm.id, observed.state)
            return observed
        return compute.migrate(plan.vm.id, self.hypervisor(target.libvirt_uri)).state

    def _domain_spec(self, plan: VmPlan) -> DomainSpec:
        disks = tuple(
            DiskSpec(
                path=str(Path(pool_spec(self.names, pool).path) / self.names.volume(volume.id)),
                target=f"vd{chr(ord('a') + (volume.device_id or 0))}",
            )
            for volume, pool in plan.disks
        )
        nics = tuple(
            NicSpec(mac=nic.mac, network=self.names.network(network.id))
            for nic, network in plan.nics
        )
        return DomainSpec(
            uuid=plan.vm.id,
            name=self.names.domain(plan.vm.id),
            vcpus=plan.vm.spec.cpus,
            memory_mb=plan.vm.spec.ram_mb,
            disks=disks,
            nics=nics,
        )

    def _realise_networks(self, plan: VmPlan) -> None:
        driver = NetworkDriver(self.hypervisor(plan.host.libvirt_uri))
        for nic, network in plan.nics:
            spec = network_spec(self.names, network, self.uplink)
            with _shared(plan.host.libvirt_uri, "network", spec.name):
                driver.ensure(spec)
                driver.add_dhcp_host(spec.name, DhcpHost(mac=nic.mac, ip=nic.address))

    def _ensure_volumes_exist(self, plan: VmPlan) -> None:
        storage = StorageDriver(self.hypervisor(plan.host.libvirt_uri))
        for volume, pool in plan.disks:
            spec = pool_spec(self.names, pool)
            with _shared(storage.hv.uri, "pool", spec.name):
                ensure_pool(storage.hv, spec)
            if not storage.observe(spec.name, self.names.volume(volume.id)).exists:
                raise StorageError(f"volume {volume.id} does not exist in pool {pool.id}")

    # Volumes ------------------------------------------------------------------

    def run_volume(
        self,
        item: WorkItem,
        volume: VolumeView,
        pool: PoolView,
        host: HostView,
        snapshot_id: UUID | None = None,
        template: TemplateSource | None = None,
    ) -> EffectorResult:
        """Volume work, and a snapshot's creation (on the snapshot's volume)."""
        storage = StorageDriver(self.hypervisor(host.libvirt_uri))
        name = self.names.volume(volume.id)
        try:
            spec = pool_spec(self.names, pool)
            with _shared(storage.hv.uri, "pool", spec.name):
                ensure_pool(storage.hv, spec)
            if item.kind == "volume.create":
                backing = None
                if volume.template_id is not None:
                    if template is None or template.template.id != volume.template_id:
                        raise Unsupported(f"volume {volume.id}: its template is not known")
                    backing = self._base_image(storage, spec.name, template, volume)
                outcome = storage.create(
                    VolumeSpec(
                        pool=spec.name,
                        name=name,
                        size_bytes=volume.size_bytes,
                        template_path=backing,
                    )
                )
            elif item.kind == "volume.resize":
                size = volume.resize_to or volume.size_bytes
                outcome = storage.resize(spec.name, name, size)
            elif item.kind == "volume.delete":
                outcome = storage.delete(spec.name, name)
            elif item.kind == "volume.revert":
                if volume.reverting_to is None:
                    raise Unsupported(f"volume {volume.id} is not being reverted")
                outcome = storage.revert(spec.name, name, self.names.snapshot(volume.reverting_to))
            elif item.kind == "snapshot.create":
                if snapshot_id is None:
                    raise Unsupported("snapshot work without a snapshot")
                outcome = storage.snapshot(spec.name, name, self.names.snapshot(snapshot_id))
            else:
                raise Unsupported(f"{item.kind} is not volume work")
        except (HypervisorError, Unsupported, StorageError, ValueError) as e:
            log.warning("work_failed", kind=item.kind, volume_id=str(volume.id), error=str(e))
            return self._result(item, host.id, None, e)
        observed = "present" if outcome.volume.exists else "absent"
        return self._result(item, host.id, observed, None)

    def _base_image(
        self, storage: StorageDriver, pool: str, source: TemplateSource, volume: VolumeView
    ) -> str:
        """The template's base image in the pool (copied there on first use),
        which the volume backs onto."""
        # Work items run concurrently: the base image is made once per pool.
        with _shared(storage.hv.uri, "base", pool, str(source.template.id)):
            return self._base_image_locked(storage, pool, source, volume)

    def _base_image_locked(
        self, storage: StorageDriver, pool: str, source: TemplateSource, volume: VolumeView
    ) -> str:
        image = source.fetch()
        if volume.size_bytes < image.virtual_size:
            # The engine's recorded size must stay the disk's real size.
            raise Unsupported(
                f"volume {volume.id} of {volume.size_bytes} bytes is smaller than its"
                f" template's virtual size of {image.virtual_size} bytes"
            )
        base = storage.create(
            VolumeSpec(
                pool=pool,
                name=self.names.template(source.template.id),
                size_bytes=image.virtual_size,
                template_path=image.path,
                clone="full",
            )
        )
        if base.volume.path is None:
            raise StorageError(f"base image of template {source.template.id} has no path")
        return base.volume.path

    def run_template(self, item: WorkItem, source: TemplateSource) -> EffectorResult:
        """Fetch a template into its image store."""
        try:
            if item.kind != "template.download":
                raise Unsupported(f"{item.kind} is not template work")
            image = source.fetch()
        except (Unsupported, StorageError, ValueError) as e:
            log.warning(
                "work_failed", kind=item.kind, template_id=str(item.aggregate_id), error=str(e)
            )
            return self._result(item, None, None, e)
        return self._result(item, None, "fetched" if image.fetched else "present", None)

    # --------------------------------------------------------------------------

    def _fault(self, point: str) -> None:
        fault = os.environ.get(FAULT_ENV, "")
        if fault.startswith(f"{point}:"):
            seconds = float(fault.split(":", 1)[1])
            log.warning("fault_injected", point=point, sleep_s=seconds)
            time.sleep(seconds)


# Work items on different aggregates run concurrently: what they share on a
# host (a network, a pool, a template's base image) is made under one lock.
_locks: dict[tuple[str, ...], threading.Lock] = {}
_locks_guard = threading.Lock()


def _shared(*key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def first_enabled(hosts: Sequence[HostView]) -> HostView | None:
    enabled = sorted((h for h in hosts if h.state == "Enabled"), key=lambda h: str(h.id))
    return enabled[0] if enabled else None
