"""Stored topics and snapshots do not depend on the install package: the
log keeps the names it was written with (engine.fabric.zone:Zone.Created)."""

from __future__ import annotations

import pickle
import uuid

from eventsourcing.utils import get_topic, resolve_topic

from cloud_engine.engine.catalog import AGGREGATES, event_classes
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.projections.readmodel import load_snapshot


def test_every_stored_class_keeps_its_topic_without_the_package() -> None:
    for cls in AGGREGATES.values():
        for stored in (cls, *event_classes(cls).values()):
            topic = get_topic(stored)
            assert not topic.startswith("cloud_engine"), topic
            assert topic.startswith("engine."), topic
            assert resolve_topic(topic) is stored


def test_a_created_event_names_its_aggregate_as_before() -> None:
    vm = VirtualMachine.create(
        "a", "vm", uuid.uuid4(), uuid.uuid4(), VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
    )
    [created] = vm.collect_events()
    assert created.originator_topic == "engine.virtual.vm:VirtualMachine"  # type: ignore[attr-defined]


def test_old_module_paths_resolve_to_the_package() -> None:
    # A class no catalog lists, by the path it had before cloud_engine.
    from cloud_engine.engine.virtual.vm import VmSpec as Spec

    assert resolve_topic("engine.virtual.vm:VmSpec") is Spec


def test_a_snapshot_pickled_before_the_package_loads() -> None:
    vm = VirtualMachine.create(
        "a", "vm", uuid.uuid4(), uuid.uuid4(), VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
    )
    # Protocol 0 writes module names as plain lines, so the earlier layout's
    # names can be put back by replacing text (binary protocols count bytes).
    new = pickle.dumps(vm, protocol=0)
    assert b"cloud_engine.engine.virtual.vm" in new
    old = new.replace(b"cloud_engine.engine.", b"engine.")
    loaded = load_snapshot(old)
    assert type(loaded) is VirtualMachine and loaded.id == vm.id
