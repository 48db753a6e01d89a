"""ComputeDriver against the real qemu:///system (TCG guests sitting in
SeaBIOS on an empty disk), plus migrate()'s decision path on libvirt's test
driver (one machine, so no real two-host migration: see driver.py)."""

import subprocess
import uuid
from pathlib import Path

import libvirt
import pytest

from cloud_engine.effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, DomainState, NicSpec
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError

pytestmark = pytest.mark.libvirt


@pytest.fixture
def driver(hypervisor):
    return ComputeDriver(hypervisor, poll_interval_s=0.05)


@pytest.fixture
def disk(pool_dir) -> Path:
    path = pool_dir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


@pytest.fixture
def network(hypervisor, name_prefix) -> str:
    name = f"{name_prefix}net"
    bridge = f"cet{uuid.uuid4().hex[:8]}"  # <= 15 chars, unique per test
    xml = f"<network><name>{name}</name><bridge name='{bridge}'/></network>"

    def create(conn):
        conn.networkDefineXML(xml).create()

    hypervisor.call("network_create", create)
    return name


@pytest.fixture
def spec(name_prefix, disk, network) -> DomainSpec:
    return DomainSpec(
        uuid=uuid.uuid4(),
        name=f"{name_prefix}vm",
        vcpus=1,
        memory_mb=64,
        disks=(DiskSpec(path=str(disk)),),
        nics=(NicSpec(mac="52:54:00:c0:ff:ee", network=network),),
    )


def raw_domain(hypervisor: Hypervisor, vm: uuid.UUID):
    return hypervisor.conn.lookupByUUIDString(str(vm))


def test_define_and_start_give_a_running_qemu_domain_with_the_spec_uuid(driver, hypervisor, spec):
    defined = driver.define(spec)
    assert defined.changed
    assert defined.state == DomainState(
        uuid=spec.uuid, exists=True, state="shutoff", name=spec.name
    )

    started = driver.start(spec.uuid)
    assert started.changed
    assert started.state.state == "running"

    dom = raw_domain(hypervisor, spec.uuid)
    assert dom.UUIDString() == str(spec.uuid)
    assert dom.name() == spec.name
    assert dom.isActive()
    assert "type='qemu'" in dom.XMLDesc(0).split("\n", 1)[0]


def test_define_and_start_are_idempotent(driver, hypervisor, spec, name_prefix):
    defines = [driver.define(spec) for _ in range(3)]
    starts = [driver.start(spec.uuid) for _ in range(3)]

    assert [o.changed for o in defines] == [True, False, False]
    assert [o.changed for o in starts] == [True, False, False]
    assert len({o.state for o in defines[1:]}) == 1
    assert {o.state.state for o in starts} == {"running"}
    ours = [d for d in hypervisor.conn.listAllDomains(0) if d.name().startswith(name_prefix)]
    assert [d.UUIDString() for d in ours] == [str(spec.uuid)]


def test_graceful_stop_of_a_guest_ignoring_acpi_falls_back_to_destroy(driver, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    stopped = driver.stop(spec.uuid, timeout_s=0.5)

    assert stopped.changed
    assert stopped.state.state == "shutoff"
    again = driver.stop(spec.uuid, timeout_s=0.5)
    assert not again.changed
    assert again.state == stopped.state


def test_forced_stop(driver, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    assert driver.stop(spec.uuid, force=True).state.state == "shutoff"
    assert not driver.stop(spec.uuid, force=True).changed


def test_reboot_keeps_the_domain_running(driver, hypervisor, spec):
    driver.define(spec)
    driver.start(spec.uuid)
    qemu_id = raw_domain(hypervisor, spec.uuid).ID()

    rebooted = driver.reboot(spec.uuid, timeout_s=0.3)

    assert rebooted.changed
    assert rebooted.state.state == "running"
    # A reset, not a restart of the QEMU process.
    assert raw_domain(hypervisor, spec.uuid).ID() == qemu_id


def test_reboot_needs_a_running_domain(driver, spec):
    with pytest.raises(DomainMissing):
        driver.reboot(spec.uuid)
    driver.define(spec)
    with pytest.raises(DomainNotRunning) as e:
        driver.reboot(spec.uuid)
    assert e.value.state == "shutoff"


def test_destroy_then_undefine_removes_it_and_repeating_is_a_no_op(driver, hypervisor, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    destroyed = driver.destroy(spec.uuid)
    assert destroyed.changed
    assert destroyed.state.state == "shutoff"  # the definition is kept
    assert not driver.destroy(spec.uuid).changed

    undefined = driver.undefine(spec.uuid)
    assert undefined.changed
    assert undefined.state == DomainState(uuid=spec.uuid, exists=False, state="absent")

    for outcome in (driver.destroy(spec.uuid), driver.undefine(spec.uuid)):
        assert not outcome.changed
        assert outcome.state.state == "absent"
    with pytest.raises(libvirt.libvirtError):
        raw_domain(hypervisor, spec.uuid)


def test_undefine_powers_off_a_running_domain(driver, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    assert driver.undefine(spec.uuid).changed
    assert driver.observe(spec.uuid).state == "absent"


def test_start_of_an_absent_domain_raises_domain_missing(driver):
    vm = uuid.uuid4()
    with pytest.raises(DomainMissing) as e:
        driver.start(vm)
    assert e.value.uuid == vm
    assert driver.observe(vm) == DomainState(uuid=vm, exists=False, state="absent")


def test_a_domain_destroyed_behind_the_drivers_back_is_observed_shutoff(driver, hypervisor, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    raw_domain(hypervisor, spec.uuid).destroy()

    assert driver.observe(spec.uuid).state == "shutoff"
    restarted = driver.start(spec.uuid)
    assert restarted.changed
    assert restarted.state.state == "running"


def test_a_paused_domain_is_observed_paused_and_start_resumes_it(driver, hypervisor, spec):
    driver.define(spec)
    driver.start(spec.uuid)
    raw_domain(hypervisor, spec.uuid).suspend()

    assert driver.observe(spec.uuid).state == "paused"
    assert driver.start(spec.uuid).state.state == "running"


def test_list_domains_includes_ours(driver, spec):
    driver.define(spec)
    driver.start(spec.uuid)

    listed = {d.uuid: d for d in driver.list_domains()}

    assert listed[spec.uuid] == DomainState(
        uuid=spec.uuid, exists=True, state="running", name=spec.name
    )


def test_a_name_taken_by_another_uuid_surfaces_libvirts_error(driver, spec):
    driver.define(spec)
    clash = DomainSpec(uuid=uuid.uuid4(), name=spec.name, vcpus=1, memory_mb=64)

    with pytest.raises(HypervisorError) as e:
        driver.define(clash)
    assert e.value.code == libvirt.VIR_ERR_OPERATION_FAILED
    assert str(spec.uuid) in e.value.message


def test_vlan_tag_on_a_plain_network_is_refused_at_start(driver, spec):
    """Pins what domain_xml's docstring says: libvirt only honours a vlan tag
    on openvswitch/hostdev networks, and these hosts have neither."""
    nic = NicSpec(mac="52:54:00:c0:ff:01", network=spec.nics[0].network, vlan=42)
    tagged = DomainSpec(
        uuid=spec.uuid, name=spec.name, vcpus=1, memory_mb=64, disks=spec.disks, nics=(nic,)
    )
    assert driver.define(tagged).changed

    with pytest.raises(HypervisorError) as e:
        driver.start(tagged.uuid)
    assert e.value.code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert "vlan" in e.value.message


# -- migrate -------------------------------------------------------------------


def test_migrating_to_the_same_libvirtd_is_refused_and_the_domain_keeps_running(
    driver, libvirt_uri, spec
):
    driver.define(spec)
    driver.start(spec.uuid)
    same_host = Hypervisor(libvirt_uri)
    try:
        with pytest.raises(HypervisorError) as e:
            driver.migrate(spec.uuid, same_host)
    finally:
        same_host.close()
    assert e.value.action == "migrate"
    assert driver.observe(spec.uuid).state == "running"


def fake_host(tmp_path: Path, name: str, domains: str = "") -> Hypervisor:
    """An independent in-memory host of libvirt's test driver."""
    path = tmp_path / f"{name}.xml"
    path.write_text(f"<node>{domains}</node>")
    return Hypervisor(f"test://{path}")


def fake_domain_xml(vm: uuid.UUID) -> str:
    return (
        f"<domain type='test'><name>ce-test-vm</name><uuid>{vm}</uuid>"
        f"<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        "<devices/></domain>"
    )


def test_migrate_is_a_no_op_when_the_destination_already_runs_it(tmp_path):
    vm = uuid.uuid4()
    source = fake_host(tmp_path, "source")
    destination = fake_host(tmp_path, "destination", fake_domain_xml(vm))
    try:
        outcome = ComputeDriver(source).migrate(vm, destination)
    finally:
        source.close()
        destination.close()
    assert not outcome.changed
    assert outcome.state == DomainState(uuid=vm, exists=True, state="running", name="ce-test-vm")


def test_migrate_of_a_domain_on_neither_host_raises_domain_missing(tmp_path):
    source, destination = fake_host(tmp_path, "source"), fake_host(tmp_path, "destination")
    try:
        with pytest.raises(DomainMissing):
            ComputeDriver(source).migrate(uuid.uuid4(), destination)
    finally:
        source.close()
        destination.close()


def test_migrate_of_a_domain_not_running_raises_domain_not_running(tmp_path):
    vm = uuid.uuid4()
    source = fake_host(tmp_path, "source", fake_domain_xml(vm))
    destination = fake_host(tmp_path, "destination")
    try:
        ComputeDriver(source).destroy(vm)
        with pytest.raises(DomainNotRunning):
            ComputeDriver(source).migrate(vm, destination)
    finally:
        source.close()
        destination.close()


def test_migrate_failure_in_libvirt_surfaces_as_hypervisor_error(tmp_path):
    """The test driver has no migration: the call is made and its refusal
    surfaces unswallowed."""
    vm = uuid.uuid4()
    source = fake_host(tmp_path, "source", fake_domain_xml(vm))
    destination = fake_host(tmp_path, "destination")
    try:
        with pytest.raises(HypervisorError) as e:
            ComputeDriver(source).migrate(vm, destination)
        assert e.value.action == "migrate"
        assert ComputeDriver(source).observe(vm).state == "running"
    finally:
        source.close()
        destination.close()
