"""ISOs on real libvirt and QEMU (TCG): the tiny-linux ISO, fetched over
HTTP on loopback into a file image store, boots a VM whose root disk is
empty (the ISO first in the boot order), and a running guest's CD-ROM is
emptied and given another ISO in place (libvirt update-device), as its
domain XML and the guest itself (its serial console) show."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import msgspec
import pytest
from template_server import Served

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.compute.console import SerialConsole
from cloud_engine.effectors.desired import (
    HostView,
    ImageStoreView,
    PoolView,
    TemplateView,
    VmSize,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.handlers.vm import VmPlan
from cloud_engine.effectors.handlers.volume import VolumePlan
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.runner import guest_image

pytestmark = [pytest.mark.libvirt]

ZONE = uuid.UUID(int=9)
MiB = 1024 * 1024


def work(kind: str, aggregate_id: uuid.UUID, version: int) -> WorkItem:
    return WorkItem(
        work_id=work_id(aggregate_id, version),
        kind=kind,
        aggregate_id=aggregate_id,
        version=version,
        position=version,
    )


@pytest.fixture
def executor(hypervisor: Hypervisor, name_prefix: str) -> Iterator[Executor]:
    ex = Executor("effector@test", names=Names(prefix=name_prefix), stop_timeout_s=5)
    try:
        yield ex
    finally:
        ex.close()


def data_iso(path: Path, label: str) -> Path:
    content = path.parent / f"{label}-content"
    content.mkdir()
    (content / "hello.txt").write_text("hello from a data ISO\n")
    subprocess.run(
        ["genisoimage", "-quiet", "-output", str(path), "-volid", label, "-rock", str(content)],
        check=True,
        capture_output=True,
    )
    return path


def iso_template(served: Served, name: str, *, bootable: bool) -> TemplateView:
    return TemplateView(
        id=uuid.uuid4(),
        version=3,
        zone_id=ZONE,
        state="Ready",
        url=f"{served.base_url}/{name}",
        format="iso",
        bootable=bootable,
    )


def cdrom(xml: str) -> tuple[str | None, str | None]:
    """The hdd drive's media and boot order in a domain XML."""
    for disk in ET.fromstring(xml).findall("devices/disk[@device='cdrom']"):
        target = disk.find("target")
        if target is not None and target.get("dev") == "hdd":
            source, boot = disk.find("source"), disk.find("boot")
            return (
                None if source is None else source.get("file"),
                None if boot is None else boot.get("order"),
            )
    raise AssertionError("no CD-ROM drive hdd")


def shell(console: SerialConsole, command: str, timeout_s: float = 60.0) -> str:
    """Run a command on the guest's serial console; what it printed."""
    marker = uuid.uuid4().hex[:8]
    console.read(0.2)
    console.write(f"{command}; echo end-{marker[:4]}''{marker[4:]}\n".encode())
    return console.expect(f"end-{marker}", timeout_s)


def test_a_vm_boots_from_an_iso_and_changes_media_live(
    executor: Executor, served: Served, tmp_path: Path, pool_dir: Path, libvirt_uri: str
) -> None:
    image = guest_image.ensure()
    shutil.copyfile(image.iso, served.root / "tiny-linux.iso")
    data_iso(served.root / "data.iso", "DATA1")
    boot = iso_template(served, "tiny-linux.iso", bootable=True)
    data = iso_template(served, "data.iso", bootable=False)
    store = ImageStoreView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled",
        url=str(tmp_path / "store"), protocol="file",
    )  # fmt: skip
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=ZONE, state="Enabled", libvirt_uri=libvirt_uri
    )
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled", url=str(pool_dir / "p")
    )
    vm_id = uuid.uuid4()
    # An empty root disk, as a deploy from an ISO makes it.
    root = VolumeView(
        id=uuid.uuid4(), version=2, zone_id=ZONE, state="Creating", size_bytes=64 * MiB,
        pool_id=pool.id, vm_id=vm_id, device_id=0,
    )  # fmt: skip
    made = executor.run(work("volume.create", root.id, 2), VolumePlan(root, pool, host))
    assert made.outcome == "succeeded", made.error
    vm = VmView(
        id=vm_id, version=5, name="from-iso", zone_id=ZONE, state="Starting",
        spec=VmSize(cpus=1, ram_mb=256, root_disk_gb=1), host_id=host.id, pool_id=pool.id,
        disks={"0": root.id}, iso_id=boot.id,
    )  # fmt: skip
    plan = VmPlan(vm=vm, host=host, disks=((root, pool),), iso=TemplateSource(boot, store))

    started = executor.run(work("vm.start", vm_id, 5), plan)
    assert (started.outcome, started.observed) == ("succeeded", "running"), started.error
    # Fetched once into the image store, copied once into the pool.
    assert served.requests == ["/tiny-linux.iso"]
    pool_iso = pool_dir / "p" / f"iso-{boot.id}.iso"
    assert (tmp_path / "store" / "template" / f"{boot.id}.iso").read_bytes() == (
        pool_iso.read_bytes()
    )
    conn = libvirt.open(libvirt_uri)
    try:
        dom = conn.lookupByUUIDString(str(vm_id))
        xml = dom.XMLDesc(0)
        assert cdrom(xml) == (str(pool_iso), "1")
        vda = ET.fromstring(xml).find("devices/disk[@device='disk']/boot")
        assert vda is not None and vda.get("order") == "2"

        with SerialConsole(libvirt_uri, vm_id) as console:
            console.write(b"\n")
            console.expect("tiny-linux", 120)
            # It runs from the ISO: its label is on a CD-ROM, no disk has one.
            assert re.search(r"/dev/sr\d", shell(console, "findfs LABEL=TINYLINUX_LIVE"))

            # The drive emptied in place: live and in the definition.
            eject = msgspec.structs.replace(vm, version=6, iso_id=None)
            ejected = executor.run(
                work("vm.iso_eject", vm_id, 6), msgspec.structs.replace(plan, vm=eject, iso=None)
            )
            assert (ejected.outcome, ejected.observed) == ("succeeded", "running"), ejected.error
            assert cdrom(dom.XMLDesc(0)) == (None, "1")  # its boot order kept until a restart
            assert cdrom(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))[0] is None
            # The guest finds no disc in the drive.
            empty = shell(console, "dd if=/dev/sr0 of=/dev/null bs=2048 count=1; echo rc=$?")
            assert "rc=1" in empty, empty

            # Another ISO inserted into the running guest, which reads it.
            insert = msgspec.structs.replace(vm, version=7, iso_id=data.id)
            inserted_plan = msgspec.structs.replace(
                plan, vm=insert, iso=TemplateSource(data, store)
            )
            inserted = executor.run(work("vm.iso_insert", vm_id, 7), inserted_plan)
            assert inserted.outcome == "succeeded", inserted.error
            data_in_pool = str(pool_dir / "p" / f"iso-{data.id}.iso")
            assert cdrom(dom.XMLDesc(0))[0] == data_in_pool
            assert cdrom(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))[0] == data_in_pool
            # The guest's CD-ROM signals the media change (the tray opened
            # and closed); opening the drive reads the new disc.
            seen = shell(
                console,
                "mkdir -p /mnt/cd; for i in 1 2 3 4 5; do"
                " mount -o ro -t iso9660 /dev/sr0 /mnt/cd 2>/dev/null && break; sleep 1; done;"
                " cat /mnt/cd/hello.txt; umount /mnt/cd",
            )
            assert "hello from a data ISO" in seen, seen
            # A repeat (a redelivered item) changes nothing.
            again = executor.run(work("vm.iso_insert", vm_id, 7), inserted_plan)
            assert again.outcome == "succeeded" and again.observed == "running"
            assert served.requests == ["/tiny-linux.iso", "/data.iso"]
    finally:
        conn.close()
