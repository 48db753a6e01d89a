import xml.etree.ElementTree as ET
from uuid import UUID, uuid4

import pytest

from cloud_engine.effectors.compute.domain_xml import domain_xml
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, NicSpec

VM = UUID("6f1c2a52-1f0e-4c3e-9a55-0d7d8f1b2c3a")


def parse(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(domain_xml(spec))


def spec(**overrides) -> DomainSpec:
    fields = {"uuid": VM, "name": "vm-1", "vcpus": 2, "memory_mb": 256}
    return DomainSpec(**(fields | overrides))


def test_identity_and_resources():
    root = parse(spec())
    assert root.tag == "domain"
    assert root.get("type") == "qemu"  # no /dev/kvm on the hosts: TCG
    assert root.findtext("uuid") == str(VM)
    assert root.findtext("name") == "vm-1"
    memory = root.find("memory")
    assert memory is not None
    assert (memory.get("unit"), memory.text) == ("MiB", "256")
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/type") == "hvm"


def test_no_graphics_and_a_serial_console():
    root = parse(spec())
    assert root.find("devices/graphics") is None
    assert root.find("devices/serial[@type='pty']") is not None


def test_disks_in_order_with_format_target_and_bus():
    disks = (
        DiskSpec(path="/var/lib/ce/root.qcow2"),
        DiskSpec(path="/var/lib/ce/data.raw", format="raw", target="sdb", bus="scsi"),
    )
    found = parse(spec(disks=disks)).findall("devices/disk")
    assert [d.get("type") for d in found] == ["file", "file"]
    assert [d.get("device") for d in found] == ["disk", "disk"]
    assert [d.find("source").get("file") for d in found] == [
        "/var/lib/ce/root.qcow2",
        "/var/lib/ce/data.raw",
    ]
    assert [d.find("driver").get("type") for d in found] == ["qcow2", "raw"]
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in found] == [
        ("vda", "virtio"),
        ("sdb", "scsi"),
    ]


def test_nics_on_networks_with_mac_and_model():
    nics = (
        NicSpec(mac="52:54:00:00:00:01", network="tenant-a"),
        NicSpec(mac="52:54:00:00:00:02", network="tenant-b", model="e1000"),
    )
    found = parse(spec(nics=nics)).findall("devices/interface")
    assert [n.get("type") for n in found] == ["network", "network"]
    assert [n.find("mac").get("address") for n in found] == [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
    ]
    assert [n.find("source").get("network") for n in found] == ["tenant-a", "tenant-b"]
    assert [n.find("model").get("type") for n in found] == ["virtio", "e1000"]
    assert all(n.find("vlan") is None for n in found)


@pytest.mark.parametrize("vlan", [0, 1, 42, 4094])
def test_vlan_tag(vlan):
    nic = NicSpec(mac="52:54:00:00:00:01", network="tenant-a", vlan=vlan)
    tags = parse(spec(nics=(nic,))).findall("devices/interface/vlan/tag")
    assert [t.get("id") for t in tags] == [str(vlan)]


def test_user_values_with_xml_special_characters_are_escaped():
    name = "vm<'&\">]]>"
    path = "/tmp/a&b/<disk>'\".qcow2"
    network = "net</source><evil/>"
    xml = domain_xml(
        spec(
            name=name,
            disks=(DiskSpec(path=path),),
            nics=(NicSpec(mac="52:54:00:00:00:01", network=network),),
        )
    )
    root = ET.fromstring(xml)
    assert root.findtext("name") == name
    assert root.find("devices/disk/source").get("file") == path
    assert root.find("devices/interface/source").get("network") == network
    assert root.find(".//evil") is None
    assert len(root.findall("name")) == 1


def test_each_spec_gets_its_own_uuid():
    a, b = uuid4(), uuid4()
    assert parse(spec(uuid=a)).findtext("uuid") == str(a)
    assert parse(spec(uuid=b)).findtext("uuid") == str(b)


def test_cdrom_drive_empty_or_with_media_and_boot_order():
    from cloud_engine.effectors.compute.domain_xml import cdrom_of, devices_of

    root_disk = DiskSpec(path="/p/root.qcow2", target="vda")
    empty = DiskSpec(path=None, format="raw", target="hdd", bus="ide", device="cdrom")
    xml = domain_xml(spec(disks=(root_disk, empty)))
    assert ET.fromstring(xml).find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert cdrom_of(xml, "hdd") == (None, None) and cdrom_of(xml, "hdc") is None
    # A bootable ISO first, the root disk second: per-device orders only.
    booting = DiskSpec(
        path="/p/iso-1.iso", format="raw", target="hdd", bus="ide", device="cdrom", boot_order=1
    )
    second = DiskSpec(path="/p/root.qcow2", target="vda", boot_order=2)
    xml2 = domain_xml(spec(disks=(second, booting)))
    root = ET.fromstring(xml2)
    assert root.find("os/boot") is None
    assert root.find("devices/disk[@device='cdrom']/readonly") is not None
    assert cdrom_of(xml2, "hdd") == ("/p/iso-1.iso", 1)
    # What a redefinition compares sees media and boot orders change.
    assert devices_of(xml)[0] == ("vda=/p/root.qcow2", "hdd=")
    assert devices_of(xml2)[0] == ("vda=/p/root.qcow2@2", "hdd=/p/iso-1.iso@1")
