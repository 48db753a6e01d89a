"""The rebuild's fast fold (engine.fast_fold) against the library's fold.

Every event type of every aggregate in the catalog is folded both ways from
the same stored payload, after a Created event of its aggregate, and the two
must give the same aggregate (every attribute) or the same error. Payloads
are made from each event's declared field types, twice with different
values. Realistic histories are checked too: the bench's deploy mix, and,
through tests/unit/support.replayed, every history the aggregates' unit
tests and state-machine tests replay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from eventsourcing.domain import OriginatorVersionError
from eventsourcing.persistence import MapperDeserialisationError

from cloud_engine.engine.catalog import AGGREGATES, event_classes
from cloud_engine.engine.fast_fold import FastFold
from cloud_engine.engine.mapper import MsgspecMapper, codec_for
from cloud_engine.engine.topics import stable_topic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from tests.unit.support import fold_both_ways, make_host

MAPPER = MsgspecMapper()
Stored = tuple[uuid.UUID, int, str, bytes]


def sample(t: mi.Type, variant: int) -> Any:
    """A value of type t as JSON builtins; variant picks among a few."""
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)] or list(t.types)
        return sample(options[variant % len(options)], variant)
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.BoolType):
        return bool(variant % 2)
    if isinstance(t, mi.IntType):
        return max(t.ge or 0, (t.gt or 0) + 1, 1) + variant
    if isinstance(t, mi.FloatType):
        return 1.5 + variant
    if isinstance(t, mi.StrType):
        return "v" * max(t.min_length or 1, 1) + str(variant)
    if isinstance(t, mi.UUIDType):
        return str(uuid.UUID(int=variant + 1))
    if isinstance(t, mi.DateTimeType):
        return (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=variant)).isoformat()
    if isinstance(t, mi.LiteralType):
        return t.values[variant % len(t.values)]
    if isinstance(t, mi.VarTupleType):
        return [sample(t.item_type, variant)] * (variant % 3)
    if isinstance(t, mi.DictType):
        return {str(variant): sample(t.value_type, variant)} if variant % 2 else {}
    if isinstance(t, mi.StructType):
        return {f.encode_name: sample(f.type, variant) for f in t.fields}
    raise AssertionError(f"no sample for {t!r}: add one")


# Text fields whose methods parse them.
ADDRESSES = {
    "cidr": "10.1.0.0/24",
    "source_cidr": "10.2.0.0/16",
    "gateway": "10.1.0.1",
    "address": "10.1.0.7",
    "private_ip": "10.1.0.8",
    "router_address": "10.1.0.2",
    "source_nat_ip": "192.0.2.9",
    "underlay_address": "192.0.2.10",
}


def payload(event_class: type[Any], variant: int, **given: Any) -> bytes:
    info = mi.type_info(codec_for(event_class).mirror)
    assert isinstance(info, mi.StructType)
    fields = {
        f.encode_name: ADDRESSES[f.name]
        if f.name in ADDRESSES and isinstance(f.type, mi.StrType)
        else sample(f.type, variant)
        for f in info.fields
    }
    fields.update(given)
    state = msgspec.json.encode(fields)
    msgspec.json.decode(state, type=codec_for(event_class).mirror)  # a valid payload
    return state


def created(cls: type[Any], aggregate_id: uuid.UUID, variant: int) -> Stored:
    event_class = cls.Created
    if codec_for(event_class).class_version > 1:
        # Stored at its version: an older payload would need upcasting.
        state = payload(
            event_class,
            variant,
            originator_topic=stable_topic(cls),
            class_version=codec_for(event_class).class_version,
        )
    else:
        state = payload(event_class, variant, originator_topic=stable_topic(cls))
    return (aggregate_id, 1, stable_topic(event_class), state)


def later(hours: int) -> str:
    return (dt.datetime(2026, 2, 1, tzinfo=dt.UTC) + dt.timedelta(hours=hours)).isoformat()


def outcome(fold: Any, rows: list[Stored]) -> tuple[str, Any]:
    """The folded aggregate's type and attributes, or the error's type."""
    aggregate = None
    try:
        for aggregate_id, version, topic, state in rows:
            aggregate = fold(aggregate, aggregate_id, version, topic, state)
    except Exception as e:
        return "error", type(e)
    return type(aggregate).__name__, vars(aggregate)


def library(aggregate: Any, aggregate_id: uuid.UUID, version: int, topic: str, state: bytes) -> Any:
    return MAPPER.decode(aggregate_id, version, topic, state).mutate(aggregate)


CASES = [
    (name, cls, event_name, event_class)
    for name, cls in AGGREGATES.items()
    for event_name, event_class in event_classes(cls).items()
    if event_name != "created"
]


@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize(
    ("name", "cls", "event_name", "event_class"), CASES, ids=[f"{c[0]}.{c[2]}" for c in CASES]
)
def test_every_event_type_folds_as_the_library_folds_it(
    name: str, cls: type[Any], event_name: str, event_class: type[Any], variant: int
) -> None:
    aggregate_id = uuid.uuid4()
    topic = stable_topic(event_class)
    rows = [
        created(cls, aggregate_id, variant),
        (aggregate_id, 2, topic, payload(event_class, variant, timestamp=later(1))),
    ]
    fast = FastFold()
    assert outcome(fast, rows) == outcome(library, rows)
    # The same event a second time (an event on an aggregate it already changed).
    again = [*rows, (aggregate_id, 3, topic, payload(event_class, variant, timestamp=later(2)))]
    assert outcome(FastFold(), again) == outcome(library, again)


def test_only_upcast_events_are_left_to_the_library() -> None:
    fast = FastFold()
    upcast: set[str] = set()
    for cls in AGGREGATES.values():
        for event_class in event_classes(cls).values():
            topic = stable_topic(event_class)
            fast.folder(topic)
            if codec_for(event_class).class_version > 1:
                upcast.add(topic)
    assert {topic for topic, quick in fast.fast.items() if not quick} == upcast
    assert upcast  # the fallback is exercised by the cases above


def test_the_bench_mix_folds_as_the_library_folds_it() -> None:
    host = make_host(name="h", cpu_cores=64, ram_mb=65536, libvirt_uri="qemu+ssh://h/system")
    spec = VmSpec(cpus=1, ram_mb=512, root_disk_gb=10, tags=("a",))
    events: list[Any] = []
    for n in range(6):
        vm = VirtualMachine.create("acct", f"vm{n}", uuid.uuid4(), uuid.uuid4(), spec)
        host.reserve(vm.id, spec.cpus, spec.ram_mb)
        vm.place(host.id, uuid.uuid4())
        vm.start_requested(host.id)
        vm.mark_running()
        vm.stop_requested()
        vm.mark_stopped()
        if n % 2:
            host.release(vm.id)
        events.extend(vm.collect_events())
    events.extend(host.collect_events())
    for aggregate in fold_both_ways(events):
        assert aggregate.version > 1


def test_a_version_gap_is_refused_as_the_library_refuses_it() -> None:
    vm = VirtualMachine.create(
        "a", "v", uuid.uuid4(), uuid.uuid4(), VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
    )
    vm.place(uuid.uuid4(), uuid.uuid4())
    vm.start_requested(vm.host_id)
    first, _, third = (MAPPER.to_stored_event(e) for e in vm.collect_events())
    rows = [(s.originator_id, s.originator_version, s.topic, s.state) for s in (first, third)]
    assert outcome(FastFold(), rows) == ("error", OriginatorVersionError)
    assert outcome(library, rows) == ("error", OriginatorVersionError)


def test_a_payload_that_does_not_decode_fails_as_in_the_library() -> None:
    vm = VirtualMachine.create(
        "a", "v", uuid.uuid4(), uuid.uuid4(), VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
    )
    vm.place(uuid.uuid4(), uuid.uuid4())
    first, second = (MAPPER.to_stored_event(e) for e in vm.collect_events())
    rows = [
        (first.originator_id, 1, first.topic, first.state),
        (second.originator_id, 2, second.topic, b'{"host_id": 7}'),
    ]
    assert outcome(FastFold(), rows) == ("error", MapperDeserialisationError)
    assert outcome(library, rows) == ("error", MapperDeserialisationError)
