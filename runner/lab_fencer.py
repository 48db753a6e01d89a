"""The lab's Fencer: a lab host is fenced by cutting its power (its
libvirtd and every QEMU die with its pid namespace), found by the libvirt
URI the engine registered it with. Only the runner knows the lab."""

from __future__ import annotations

import asyncio

from cloud_engine.automation.fencing import FenceError, FenceTarget
from cloud_engine.lab import Lab, LabError


class LabFencer:
    name = "lab-power"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    async def fence(self, host: FenceTarget) -> None:
        await asyncio.to_thread(self._fence, host)

    def _fence(self, host: FenceTarget) -> None:
        try:
            found = [s for s in self.lab.status() if s.host.uri == host.libvirt_uri]
            if not found:
                raise FenceError(f"{host.name}: no lab host has the URI {host.libvirt_uri}")
            name = found[0].host.name
            self.lab.power_off(name)
            after = [s for s in self.lab.status() if s.host.name == name]
        except LabError as e:
            raise FenceError(f"{host.name}: {e}") from e
        if not after or after[0].power != "off":
            raise FenceError(f"{host.name}: still powered after the power cut")
