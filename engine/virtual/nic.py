"""Nic: a virtual machine's interface on one network."""

from __future__ import annotations

import re
from typing import Literal
from uuid import UUID, uuid4

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require
from cloud_engine.engine.virtual.network import parse_address

NicState = Literal["Allocated", "Plugged", "Unplugged", "Released"]

# A NIC is a PCI device and one PCI bus has 32 slots.
MAX_DEVICE_ID = 31
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")  # \Z: "$" allows a final newline


def mac_for(nic_id: UUID) -> str:
    """A locally administered unicast MAC derived from the NIC's id.

    Deriving it (rather than drawing a random one) means replaying or retrying
    the create command yields the same MAC. The last bytes of a uuid4 are random.
    """
    return ":".join(f"{b:02x}" for b in (0x02, *nic_id.bytes[11:16]))


def require_mac(mac: str, field: str = "mac") -> None:
    require(bool(_MAC.match(mac)), f"{field} must look like 02:00:5e:10:00:01", field=field)
    first = int(mac[:2], 16)
    # Bit 0 set would make it a multicast address; bit 1 clear a vendor (OUI) one.
    require(
        first & 0x01 == 0 and first & 0x02 == 0x02,
        f"{field} must be a locally administered unicast address",
        field=field,
    )


class Nic(Aggregate):
    entity = "nic"

    @event("Created")
    def __init__(
        self,
        vm_id: UUID,
        network_id: UUID,
        ip_id: UUID | None,
        address: str | None,
        mac: str,
        device_id: int,
    ) -> None:
        self.vm_id = vm_id
        self.network_id = network_id
        self.ip_id = ip_id
        self.address = address
        self.mac = mac
        self.device_id = device_id
        self.state: NicState = "Allocated"

    @classmethod
    def create(
        cls,
        *,
        vm_id: UUID,
        network_id: UUID,
        device_id: int,
        ip_id: UUID | None = None,
        address: str | None = None,
        mac: str | None = None,
        id: UUID | None = None,  # the library's keyword
    ) -> Nic:
        require(
            0 <= device_id <= MAX_DEVICE_ID,
            f"device_id must be 0..{MAX_DEVICE_ID}",
            field="device_id",
        )
        require(
            (ip_id is None) == (address is None),
            "ip_id and address must be given together",
            field="address",
        )
        if address is not None:
            address = str(parse_address(address))
        # Chosen here rather than by the library because the MAC derives from it.
        nic_id = uuid4() if id is None else id
        mac = mac_for(nic_id) if mac is None else mac.lower()
        require_mac(mac)
        created: Nic = cls._create(
            cls.Created,
            id=nic_id,
            vm_id=vm_id,
            network_id=network_id,
            ip_id=ip_id,
            address=address,
            mac=mac,
            device_id=device_id,
        )
        return created

    def plug(self) -> None:
        self.require_state(["Allocated", "Unplugged"], "plug")
        self._plugged()

    def unplug(self) -> None:
        self.require_state(["Plugged"], "unplug")
        self._unplugged()

    def release(self) -> None:
        # A plugged NIC is still in the guest; it has to be unplugged first.
        self.require_state(["Allocated", "Unplugged"], "release")
        self._released()

    @event("Plugged")
    def _plugged(self) -> None:
        self.state = "Plugged"

    @event("Unplugged")
    def _unplugged(self) -> None:
        self.state = "Unplugged"

    @event("Released")
    def _released(self) -> None:
        self.state = "Released"
