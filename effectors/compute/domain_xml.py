"""libvirt domain XML for a DomainSpec.

Built with ElementTree so every user value (name, paths, network names) is
escaped by the serialiser, never spliced into markup.

Domains are type='qemu' (TCG) unless the spec says kvm: the tests run
anywhere under TCG, and `up` asks for KVM where /dev/kvm is usable. Graphics
are left out; a serial console on a pty is enough to debug.

VLAN: a NicSpec.vlan becomes <vlan><tag id='N'/></vlan> on the interface. That
is only expressed in the XML: libvirt honours a vlan tag only on openvswitch,
hostdev (SR-IOV) and some macvtap-passthrough networks, and 802.1Q kernel
devices are not available on these machines. On a plain libvirt bridge
network (isolated or NAT) defining such a domain succeeds but starting it
fails with VIR_ERR_CONFIG_UNSUPPORTED (67): "interface <mac> - vlan tag not
supported for this connection type" (seen with libvirt 9.0.0 / QEMU 7.2).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NamedTuple

from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, NicSpec


def domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "uuid").text = str(spec.uuid)
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(dom, "vcpu", placement="static").text = str(spec.vcpus)

    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type").text = "hvm"
    if not any(d.boot_order is not None for d in spec.disks):
        ET.SubElement(os_, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    # Without ACPI a graceful shutdown/reboot request has nothing to deliver to.
    ET.SubElement(features, "acpi")

    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"

    devices = ET.SubElement(dom, "devices")
    for disk in spec.disks:
        devices.append(_disk(disk))
    for nic in spec.nics:
        devices.append(_nic(nic))
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")

    return ET.tostring(dom, encoding="unicode")


_KIB = {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1 << 20, "G": 1 << 20}


def size_of(xml: str) -> tuple[str, int]:
    """The vCPUs and the RAM in KiB of a domain XML: what a scale changes
    between two starts (libvirt gives the RAM back in KiB, we write MiB)."""
    root = ET.fromstring(xml)
    memory = root.find("memory")
    kib = 0
    if memory is not None and memory.text is not None:
        kib = int(memory.text) * _KIB.get(memory.get("unit", "KiB"), 1)
    return (root.findtext("vcpu") or "").strip(), kib


def devices_of(xml: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The disk sources (with their targets, CD-ROMs' media and boot
    orders) and interface MACs of a domain XML: what an attach or detach
    of a volume or an ISO changes between two starts."""
    devices = ET.fromstring(xml).find("devices")
    if devices is None:
        return (), ()
    disks = []
    for d in devices.findall("disk"):
        target, source, boot = d.find("target"), d.find("source"), d.find("boot")
        if target is None or (d.get("device") == "disk" and source is None):
            continue
        file = "" if source is None else source.get("file", "")
        order = "" if boot is None else f"@{boot.get('order')}"
        disks.append(f"{target.get('dev')}={file}{order}")
    macs = tuple((m.get("address") or "").lower() for m in devices.findall("interface/mac"))
    return tuple(disks), macs


class Cdrom(NamedTuple):
    media: str | None
    boot_order: int | None


def cdrom_of(xml: str, target: str) -> Cdrom | None:
    """A domain XML's CD-ROM drive at target (None: it has none there)."""
    devices = ET.fromstring(xml).find("devices")
    for d in [] if devices is None else devices.findall("disk"):
        t = d.find("target")
        if d.get("device") == "cdrom" and t is not None and t.get("dev") == target:
            source, boot = d.find("source"), d.find("boot")
            return Cdrom(
                media=None if source is None else source.get("file"),
                boot_order=None if boot is None else int(boot.get("order", "0")),
            )
    return None


def disk_xml(disk: DiskSpec) -> str:
    """One disk's XML (libvirt's update-device takes a CD-ROM's)."""
    return ET.tostring(_disk(disk), encoding="unicode")


def _disk(disk: DiskSpec) -> ET.Element:
    el = ET.Element("disk", type="file", device=disk.device)
    ET.SubElement(el, "driver", name="qemu", type=disk.format)
    if disk.path is not None:
        ET.SubElement(el, "source", file=disk.path)
    ET.SubElement(el, "target", dev=disk.target, bus=disk.bus)
    if disk.boot_order is not None:
        ET.SubElement(el, "boot", order=str(disk.boot_order))
    if disk.device == "cdrom":
        ET.SubElement(el, "readonly")
    return el


def _nic(nic: NicSpec) -> ET.Element:
    el = ET.Element("interface", type="network")
    ET.SubElement(el, "mac", address=nic.mac)
    ET.SubElement(el, "source", network=nic.network)
    ET.SubElement(el, "model", type=nic.model)
    if nic.vlan is not None:
        vlan = ET.SubElement(el, "vlan")
        ET.SubElement(vlan, "tag", id=str(nic.vlan))
    return el
