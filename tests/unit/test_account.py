"""An account's limits and the shares its resources hold against them."""

from uuid import uuid4

import pytest

from cloud_engine.engine.errors import QuotaExceeded
from cloud_engine.engine.virtual.account import Account, account_id


def _account() -> Account:
    return Account._new(id=account_id("alice"), name="alice")


def test_shares_are_held_released_and_checked_against_the_limits() -> None:
    account = _account()
    account.set_limits({"vms": 2, "vcpus": 4})
    vm1, vm2, vm3 = uuid4(), uuid4(), uuid4()
    account.hold(vm1, {"vms": 1, "vcpus": 2, "ram_mb": 512})
    account.hold(vm1, {"vms": 1, "vcpus": 2, "ram_mb": 512})  # the same share: nothing new
    account.hold(vm2, {"vms": 1, "vcpus": 2})
    assert account.used == {"vms": 2, "vcpus": 4, "ram_mb": 512, "volume_gb": 0, "public_ips": 0}
    with pytest.raises(QuotaExceeded, match="vms limit 2") as refused:
        account.hold(vm3, {"vms": 1, "vcpus": 1})
    assert refused.value.field == "vms" and refused.value.code == "quota-exceeded"
    account.release(vm2)
    account.release(vm2)  # twice: once
    with pytest.raises(QuotaExceeded) as refused:
        account.hold(vm3, {"vms": 1, "vcpus": 3})
    assert refused.value.field == "vcpus"
    account.hold(vm3, {"vms": 1, "vcpus": 2})
    # A share may shrink past a limit set below the usage, never grow.
    account.set_limits({"vcpus": 1})
    account.hold(vm3, {"vms": 1, "vcpus": 1})
    with pytest.raises(QuotaExceeded):
        account.hold(vm3, {"vms": 1, "vcpus": 2})
    account.set_limits({"vcpus": None, "vms": None})
    assert account.limits == {} and account.state == "Unlimited"
    account.hold(uuid4(), {"vms": 1, "vcpus": 64})
    names = [type(e).__name__ for e in account.collect_events()]
    assert names.count("Held") == 5 and names.count("Released") == 1
    assert names.count("LimitsSet") == 3  # an unchanged set records nothing
    with pytest.raises(ValueError, match="cores"):
        account.set_limits({"cores": 1})


def test_usage_after_every_command_is_what_the_resources_hold() -> None:
    """The whole command scenario (deploys, their compensation, expunges,
    volume resizes and destroys, public IPs allocated and released) through
    each handler: the account's usage is what its live resources add up to."""
    from cloud_engine.engine.commands import dispatch
    from cloud_engine.engine.metadata import EventMeta, bound_meta
    from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
    from cloud_engine.engine.virtual.ip_address import IpAddress
    from cloud_engine.engine.virtual.vm import VirtualMachine
    from cloud_engine.engine.virtual.volume import Volume
    from tests.scenarios import run_every_command

    uow = InMemoryUnitOfWork()

    def do(command):
        return dispatch(uow, command)

    with bound_meta(EventMeta(actor="test", request_id="r", correlation_id="c")):
        run_every_command(do)
    accounts = [a for a in uow.aggregates.values() if isinstance(a, Account)]
    assert accounts
    for account in accounts:
        mine = [a for a in uow.aggregates.values() if getattr(a, "account", None) == account.name]
        vms = [v for v in mine if isinstance(v, VirtualMachine) and v.state != "Expunged"]
        volumes = [v for v in mine if isinstance(v, Volume) and v.state != "Destroyed"]
        ips = [i for i in mine if isinstance(i, IpAddress) and i.state != "Released"]
        gib = sum(
            -(-max(v.size_bytes, v.resize_to or 0, v.reverting_size or 0) // (1 << 30))
            for v in volumes
        )
        assert account.used == {
            "vms": len(vms),
            "vcpus": sum(v.spec.cpus for v in vms),
            "ram_mb": sum(v.spec.ram_mb for v in vms),
            "volume_gb": gib,
            "public_ips": len(ips),
        }
    names = {type(e).__name__ for e in uow.commit() if type(e).__qualname__.startswith("Account")}
    assert {"Held", "Released"} <= names  # the scenario both takes and gives back
