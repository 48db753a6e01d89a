"""Quotas settled in the command's own transaction.

After a command's handler ran, and before its events are stored, every VM,
volume and IP address it changed is compared with what it holds against
its account (engine/virtual/account.py): a new VM holds one vm, its vCPUs
and RAM until it is expunged; a volume its size in GiB (rounded up, a
requested resize included) until it is destroyed; a public IP (an address
on a public network, which names the account it is for) one public IP
until it is released. Settled from the aggregates' state rather than in each
handler, so no path that makes or removes a resource (a deploy, its
compensation, an expunge, a release) can forget it. A limit it would pass
raises QuotaExceeded and the command records nothing.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.account import Account, account_id
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

GIB = 1 << 30
# Events after which a resource's share may differ; any other event (a VM
# started, a volume attached) leaves the account untouched, so the hot path
# of the engine does not read or write it.
_VM_EVENTS = frozenset({"Created", "Expunged"})
_VOLUME_EVENTS = frozenset({"Created", "ResizeRequested", "Resized", "Reverted", "Destroyed"})
_IP_EVENTS = frozenset({"Created", "Released"})


def _names(aggregate: Aggregate) -> set[str]:
    return {type(e).__name__ for e in aggregate.pending_events}


def _vm_share(vm: VirtualMachine) -> dict[str, int]:
    if vm.state == "Expunged":
        return {}
    return {"vms": 1, "vcpus": vm.spec.cpus, "ram_mb": vm.spec.ram_mb}


def _volume_share(volume: Volume) -> dict[str, int]:
    if volume.state == "Destroyed":
        return {}
    size = max(volume.size_bytes, volume.resize_to or 0, volume.reverting_size or 0)
    return {"volume_gb": -(-size // GIB)}


def settle(ws: UnitOfWork) -> None:
    for aggregate in ws.changed():
        if isinstance(aggregate, VirtualMachine) and _names(aggregate) & _VM_EVENTS:
            _hold(ws, aggregate.account, aggregate.id, _vm_share(aggregate))
        elif isinstance(aggregate, Volume) and _names(aggregate) & _VOLUME_EVENTS:
            _hold(ws, aggregate.account, aggregate.id, _volume_share(aggregate))
        elif isinstance(aggregate, IpAddress) and _names(aggregate) & _IP_EVENTS:
            if aggregate.account is None:
                continue  # an address of its network's account, not a public IP
            held = {"public_ips": 1} if aggregate.state != "Released" else {}
            _hold(ws, aggregate.account, aggregate.id, held)


def _hold(ws: UnitOfWork, name: str, resource_id: UUID, share: dict[str, int]) -> None:
    account = ws.find(Account, account_id(name))
    if account is None:
        if not share:
            return
        account = Account._new(id=account_id(name), name=name)
        ws.add(account)
    if share:
        account.hold(resource_id, share)
    else:
        account.release(resource_id)
