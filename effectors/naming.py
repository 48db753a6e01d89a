"""How engine resources are named on a host. The prefix keeps test and
production objects apart; the domain UUID is always the VM id."""

from __future__ import annotations

from uuid import UUID

import msgspec


class Names(msgspec.Struct, frozen=True):
    prefix: str = "ce-"

    def domain(self, vm_id: UUID) -> str:
        return f"{self.prefix}vm-{vm_id.hex[:12]}"

    def pool(self, pool_id: UUID) -> str:
        return f"{self.prefix}pool-{pool_id.hex[:12]}"

    def volume(self, volume_id: UUID) -> str:
        return f"{volume_id}.qcow2"

    def template(self, template_id: UUID) -> str:
        # The template's base image in a primary pool; volumes back onto it.
        return f"tpl-{template_id}.qcow2"

    def iso(self, template_id: UUID) -> str:
        # An ISO template's copy in a primary pool, which CD-ROMs read.
        return f"iso-{template_id}.iso"

    def snapshot(self, snapshot_id: UUID) -> str:
        return f"ce-{snapshot_id}"  # qemu-img also matches ids: never all digits

    def seed(self, vm_id: UUID) -> str:
        """The file of a VM's NoCloud seed ISO (in its root disk's pool)."""
        return f"{self.prefix}seed-{vm_id.hex}.iso"

    def network(self, network_id: UUID) -> str:
        return f"{self.prefix}net-{network_id.hex[:12]}"

    def bridge(self, network_id: UUID) -> str:
        return f"cebr{network_id.hex[:10]}"  # kernel limit: 15 characters
