"""Fencing: making sure a host that is Down can no longer write to any disk
before anything it ran is started elsewhere.

`Fencer` is the seam. The lab's (runner/lab_fencer.py) powers the lab host
off: its libvirtd and every QEMU die with its pid namespace. On real
hardware a fencer powers the machine off out of band: IPMI
(`ipmitool -I lanplus -H <bmc> -U <user> -P <secret> chassis power off`,
then `chassis power status` until "off") or Redfish (`POST
/redfish/v1/Systems/<id>/Actions/ComputerSystem.Reset` with
`{"ResetType": "ForceOff"}`, then `GET /redfish/v1/Systems/<id>` until
`PowerState` is "Off"); neither is implemented here. A fence succeeds only
once the host is known off: a fencer that cannot tell raises, and the host
stays Down and unfenced (nothing restarted) until it can or an admin
declares it up.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

import msgspec


class FenceTarget(msgspec.Struct, frozen=True, kw_only=True):
    host_id: UUID
    name: str
    libvirt_uri: str


class FenceError(Exception):
    pass


class Fencer(Protocol):
    name: str

    async def fence(self, host: FenceTarget) -> None:
        """Return once the host is off; raise FenceError otherwise."""


class NoFencer:
    """Where no fencer is configured: never claims a host is off, so HA
    never restarts anything of a Down host (an admin decides)."""

    name = "none"

    async def fence(self, host: FenceTarget) -> None:
        raise FenceError(f"no fencer configured: host {host.name} cannot be fenced")
