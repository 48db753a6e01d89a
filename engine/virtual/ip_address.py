"""IpAddress: one address handed out by a Network, and what it is attached to.

The command that allocates it on the Network creates this aggregate with the
same id in the same transaction, so the pool and the address never disagree.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.virtual.network import parse_address

IpState = Literal["Allocated", "Associated", "Released"]


class IpAddress(Aggregate):
    entity = "ip"

    class Created(Aggregate.Created):
        """v2 added account: whose a public IP is (None: its network's
        account's, as every address recorded before)."""

        network_id: UUID
        address: str
        owner_id: UUID | None
        account: str | None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["account"] = None

    @event(Created)
    def __init__(
        self, network_id: UUID, address: str, owner_id: UUID | None, account: str | None
    ) -> None:
        self.network_id = network_id
        self.account = account
        self.address = address
        self.owner_id = owner_id
        self.nic_id: UUID | None = None
        self.state: IpState = "Allocated"

    @classmethod
    def create(
        cls,
        *,
        network_id: UUID,
        address: str,
        owner_id: UUID | None = None,
        account: str | None = None,
        id: UUID | None = None,  # the library's keyword
    ) -> IpAddress:
        created: IpAddress = cls._create(
            cls.Created,
            id=id,
            network_id=network_id,
            address=str(parse_address(address)),
            owner_id=owner_id,
            account=account,
        )
        return created

    def associate(self, nic_id: UUID) -> None:
        self.require_state(["Allocated"], "associate")
        self._associated(nic_id=nic_id)

    def disassociate(self) -> None:
        self.require_state(["Associated"], "disassociate")
        self._disassociated()

    def require_releasable(self) -> None:
        """Checked on its own by commands that must release the Network's copy first."""
        # An associated address is still configured on a NIC.
        self.require_state(["Allocated"], "release")

    def release(self) -> None:
        self.require_releasable()
        self._released()

    @event("Associated")
    def _associated(self, nic_id: UUID) -> None:
        self.nic_id = nic_id
        self.state = "Associated"

    @event("Disassociated")
    def _disassociated(self) -> None:
        self.nic_id = None
        self.state = "Allocated"

    @event("Released")
    def _released(self) -> None:
        self.state = "Released"
