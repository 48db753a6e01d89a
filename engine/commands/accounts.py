"""Commands on accounts: the limits administrators set (engine/virtual/account.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.account import Account, account_id

Limit = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]


class SetAccountLimits(Command, frozen=True, kw_only=True):
    """Limits to set (a number) or lift (null); those not named stay."""

    account: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    vms: Limit | msgspec.UnsetType | None = msgspec.UNSET
    vcpus: Limit | msgspec.UnsetType | None = msgspec.UNSET
    ram_mb: Limit | msgspec.UnsetType | None = msgspec.UNSET
    volume_gb: Limit | msgspec.UnsetType | None = msgspec.UNSET
    public_ips: Limit | msgspec.UnsetType | None = msgspec.UNSET


@handles(SetAccountLimits)
def set_account_limits(uow: UnitOfWork, cmd: SetAccountLimits) -> Outcome:
    aid = account_id(cmd.account)
    account = uow.find(Account, aid)
    if account is None:
        account = Account._new(id=aid, name=cmd.account)
        uow.add(account)
    given = {
        name: getattr(cmd, name)
        for name in ("vms", "vcpus", "ram_mb", "volume_gb", "public_ips")
        if getattr(cmd, name) is not msgspec.UNSET
    }
    account.set_limits(given)
    return Outcome(aggregate_id=aid)
