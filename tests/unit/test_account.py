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
