"""How an engine Network becomes what the network driver realises on a host."""

from __future__ import annotations

import uuid

import pytest

from cloud_engine.effectors.desired import NetworkView
from cloud_engine.effectors.mapping import Unsupported, Uplink, network_spec
from cloud_engine.effectors.naming import Names

UPLINK = Uplink(device="eth1", local_ip="192.0.2.1", peers=("192.0.2.1", "192.0.2.2"))


def view(isolation: str, tag: int | None = 42) -> NetworkView:
    return NetworkView(
        id=uuid.uuid4(),
        version=3,
        cidr="10.1.0.0/24",
        gateway="10.1.0.1",
        isolation=isolation,
        tag=tag,
        state="Implemented",
    )


@pytest.mark.parametrize("isolation", ["none", "VLAN", "VXLAN"])
def test_without_an_uplink_every_network_is_a_host_local_bridge(isolation: str) -> None:
    spec = network_spec(Names(), view(isolation))
    assert spec.isolation == "none"
    assert spec.vlan is None and spec.vxlan is None
    assert spec.cidr == "10.1.0.0/24" and spec.gateway == "10.1.0.1"


def test_vxlan_over_the_uplink_uses_the_tag_as_vni_and_floods_to_the_peers() -> None:
    spec = network_spec(Names(), view("VXLAN"), UPLINK)
    assert spec.isolation == "vxlan"
    assert spec.vxlan is not None
    assert spec.vxlan.vni == 42
    assert spec.vxlan.underlay_dev == "eth1"
    assert spec.vxlan.remote_ips == ("192.0.2.2",)  # not itself
    assert spec.mtu == 1450


def test_vlan_over_the_uplink_carries_the_tag() -> None:
    spec = network_spec(Names(), view("VLAN", 100), UPLINK)
    assert (spec.isolation, spec.vlan) == ("vlan", 100)


def test_plain_network_ignores_the_uplink() -> None:
    assert network_spec(Names(), view("none", None), UPLINK).isolation == "none"


@pytest.mark.parametrize(
    ("isolation", "tag", "message"), [("GRE", 1, "unknown isolation"), ("VXLAN", None, "no tag")]
)
def test_unusable_networks_are_refused_with_the_reason(
    isolation: str, tag: int | None, message: str
) -> None:
    with pytest.raises(Unsupported, match=message):
        network_spec(Names(), view(isolation, tag), UPLINK)
