"""state_view's one-pass JSON equals the general form (to_builtins, then
encode) byte for byte: for the state of every aggregate after each of its
event types, for a host holding reservations (a mapping keyed by VM id), a
VM with disks (keyed by device number) and values of the other kinds
attributes hold."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from cloud_engine.engine.fast_fold import FastFold
from cloud_engine.engine.topics import stable_topic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.projections.history import _encoder, _to_plain, attributes_json, state_view
from tests.unit.support import make_host
from tests.unit.test_fast_fold import CASES, created, later, payload


def general(attributes: dict[str, Any]) -> bytes:
    plain = msgspec.to_builtins(
        attributes, str_keys=True, enc_hook=_to_plain, order="deterministic"
    )
    return _encoder.encode(plain)


@pytest.mark.parametrize(
    ("name", "cls", "event_name", "event_class"), CASES, ids=[f"{c[0]}.{c[2]}" for c in CASES]
)
def test_every_aggregate_state_encodes_as_before(
    name: str, cls: type[Any], event_name: str, event_class: type[Any]
) -> None:
    aggregate_id = uuid.uuid4()
    fold = FastFold()
    aggregate = None
    rows = [
        created(cls, aggregate_id, 1),
        (aggregate_id, 2, stable_topic(event_class), payload(event_class, 1, timestamp=later(1))),
    ]
    try:
        for row in rows:
            aggregate = fold(aggregate, *row)
    except Exception:
        pass  # a release of nothing reserved: the Created state is still checked
    assert aggregate is not None
    check_view(aggregate)


def check_view(aggregate: Any) -> None:
    view = state_view(aggregate)
    attributes = msgspec.json.decode(bytes(view.attributes))
    assert isinstance(attributes, dict)
    # What the view holds, encoded the general way from the same values.
    source = {k: v for k, v in vars(aggregate).items() if not k.startswith("_")}
    for key in attributes:
        if key not in source:
            source[key] = getattr(aggregate, key)
    assert bytes(view.attributes) == general(source)


def test_mappings_keyed_by_ids_and_numbers_encode_as_before() -> None:
    host = make_host(name="h", cpu_cores=64, ram_mb=65536, libvirt_uri="qemu+ssh://h/system")
    for _ in range(5):
        host.reserve(uuid.uuid4(), 1, 512)
    check_view(host)
    vm = VirtualMachine.create(
        "a", "v", uuid.uuid4(), uuid.uuid4(), VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
    )
    vm._disks = {10: uuid.uuid4(), 2: uuid.uuid4(), 0: uuid.uuid4()}
    check_view(vm)
    assert b'"disks":{"0":' in bytes(state_view(vm).attributes)


@pytest.mark.parametrize(
    "attributes",
    [
        {"b": 1, "a": {"y": 2, "x": [1, 2]}, "c": None},
        {"tags": {"b", "a"}, "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)},
        {"net": ipaddress.ip_network("10.0.0.0/24"), "addr": ipaddress.ip_address("10.0.0.1")},
        {"by_number": {3: "c", 1: "a", 20: "b"}},  # a plain dict with number keys
        {"proxy": MappingProxyType({uuid.UUID(int=2): 1, uuid.UUID(int=1): 2})},
        {"nested": MappingProxyType({"k": MappingProxyType({2: "x", 1: "y"})})},
        {"spec": VmSpec(cpus=2, ram_mb=128, root_disk_gb=3, tags=("z", "a"))},
    ],
)
def test_values_of_every_kind_encode_as_before(attributes: dict[str, Any]) -> None:
    assert attributes_json(attributes) == general(attributes)
