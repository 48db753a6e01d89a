"""bench/chaos_checks.py's tag check finds what it claims to: a tag held by
two networks, a tag a physical network handed out that no network holds,
a tag a network holds that its physical network never handed out."""

from __future__ import annotations

import sys
from pathlib import Path
from uuid import UUID, uuid4

from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from cloud_engine.engine.virtual.network import Network

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from chaos_checks import tags_allocated_once  # a bench module: bench/ on the path

ZONE = uuid4()


def physical() -> PhysicalNetwork:
    return PhysicalNetwork.create(
        zone_id=ZONE, name="underlay", isolation="VXLAN", tag_range=TagRange(first=1, last=10)
    )


def network(physical_id: UUID, n: int) -> Network:
    return Network.create(
        account="a", name=f"n{n}", zone_id=ZONE, cidr=f"10.0.{n}.0/24",
        isolation="VXLAN", physical_network_id=physical_id,
    )  # fmt: skip


def tagged(p: PhysicalNetwork, n: int) -> Network:
    net = network(p.id, n)
    net.assign_tag(p.allocate_tag(net.id))
    return net


def test_tags_handed_out_once_and_held_pass() -> None:
    p = physical()
    nets = [tagged(p, n) for n in range(3)]
    untagged = network(p.id, 9)
    assert tags_allocated_once([p, *nets, untagged]) == []
    assert sorted(n.tag or 0 for n in nets) == [1, 2, 3]


def test_a_tag_held_by_two_networks_is_found() -> None:
    p = physical()
    first = tagged(p, 0)
    second = network(p.id, 1)
    assert first.tag is not None
    second.assign_tag(first.tag)  # as a lost race would
    found = tags_allocated_once([p, first, second])
    assert any("held by 2 networks" in line for line in found), found


def test_a_tag_allocated_to_no_network_is_found() -> None:
    p = physical()
    held = tagged(p, 0)
    p.allocate_tag(uuid4())  # a network whose own change was lost
    found = tags_allocated_once([p, held])
    assert any("tags allocated 2 differ" in line for line in found), found


def test_a_tag_its_physical_network_never_gave_is_found() -> None:
    p = physical()
    stray = network(p.id, 0)
    stray.assign_tag(7)
    found = tags_allocated_once([p, stray])
    assert any("tags allocated 0 differ" in line for line in found), found
