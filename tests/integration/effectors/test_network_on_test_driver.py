"""The network driver on libvirt's test driver (what `up`'s demo hosts and the
benchmarks use): it has no separate inactive network XML, so the driver
must treat the live definition as the only one, idempotently."""

import uuid

from cloud_engine.effectors.desired import NetworkView
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.mapping import network_spec
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.network.driver import NetworkDriver
from cloud_engine.effectors.network.spec import DhcpHost


def test_ensure_and_dhcp_hosts_are_idempotent_on_the_test_driver():
    view = NetworkView(
        id=uuid.uuid4(),
        version=1,
        cidr="10.9.0.0/24",
        gateway="10.9.0.1",
        isolation="none",
        tag=None,
        state="Implemented",
    )
    spec = network_spec(Names(prefix=f"t{uuid.uuid4().hex[:6]}-"), view)
    hv = Hypervisor("test:///default")
    try:
        driver = NetworkDriver(hv)
        assert [driver.ensure(spec).changed for _ in range(2)] == [True, False]
        host = DhcpHost(mac="52:54:00:00:00:01", ip="10.9.0.5")
        assert [driver.add_dhcp_host(spec.name, host).changed for _ in range(2)] == [True, False]
        assert host in driver.observe(spec.name).dhcp_hosts
        assert driver.remove_dhcp_host(spec.name, host.mac).changed
        assert host not in driver.observe(spec.name).dhcp_hosts
    finally:
        hv.close()
