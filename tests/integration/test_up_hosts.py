"""How `up` tells which demo hosts a data directory has, from its log, and
what it refuses: never a second kind beside the first, never fewer hosts
than registered, never a lab host under another path. Real event store;
lab hosts registered as `up` registers them (no lab needs to run for
that: registration records URIs and paths)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.process import StopSignals
from cloud_engine.infra.settings import SettingsError, load_settings
from cloud_engine.lab import LabHost
from cloud_engine.runner import up_hosts
from cloud_engine.runner.demo import DemoFabric, ensure_demo_fabric

pytestmark = pytest.mark.postgres


def _lab_host(state: Path, n: int) -> LabHost:
    return LabHost(
        name=f"h{n}",
        uri=f"qemu+unix:///system?socket={state}/hosts/h{n}/run/libvirt-sock",
        address=f"169.254.240.{10 + n}",
        migration_uri=f"tcp://169.254.240.{10 + n}",
        underlay_device="lab0",
        shared_pool_path=str(state / "shared"),
        local_pool_path=str(state / "hosts" / f"h{n}" / "local"),
        netns=f"celab-test-h{n}",
        pid=0,
    )


def _demo(
    service: CommandService, store: EventStore, data_dir: Path, **hosts: object
) -> DemoFabric:
    fabric, images = ensure_demo_fabric(service, store, data_dir, **hosts)  # type: ignore[arg-type]
    if images is not None:
        images.close()
    return fabric


def test_the_kind_and_number_of_demo_hosts_come_from_the_log(
    service: CommandService, store: EventStore, tmp_path: Path
) -> None:
    assert up_hosts.registered(store) == (None, 0)
    _demo(service, store, tmp_path, hosts=3)
    assert up_hosts.registered(store) == ("test", 3)


def test_lab_hosts_are_registered_with_their_underlay_and_pools(
    service: CommandService, store: EventStore, tmp_path: Path
) -> None:
    lab = [_lab_host(tmp_path / "lab", n) for n in (1, 2)]
    fabric = _demo(service, store, tmp_path, lab=lab)
    assert up_hosts.registered(store) == ("lab", 2)
    hosts = [store.load(h) for h in fabric.hosts]
    assert [(h.name, h.libvirt_uri, h.underlay_address) for h in hosts if isinstance(h, Host)] == [
        (h.name, h.uri, h.address) for h in lab
    ]
    shared = store.load(fabric.pool)
    assert isinstance(shared, StoragePool)
    assert (shared.scope, shared.url) == ("cluster", f"file://{tmp_path}/lab/shared")
    local = [store.load(p) for p in fabric.local_pools]
    assert [(p.scope, p.host_id, p.url) for p in local if isinstance(p, StoragePool)] == [
        ("host", h, f"file://{x.local_pool_path}") for h, x in zip(fabric.hosts, lab, strict=True)
    ]
    # First-fit tries pools in id order: the shared one first.
    assert all(fabric.pool.int < p.int for p in fabric.local_pools)
    # A second start finds them all, and a third host joins.
    again = _demo(service, store, tmp_path, lab=[*lab, _lab_host(tmp_path / "lab", 3)])
    assert again.hosts[:2] == fabric.hosts
    assert again.local_pools[:2] == fabric.local_pools
    assert up_hosts.registered(store) == ("lab", 3)


def test_a_data_directory_keeps_its_kind_and_its_hosts(
    service: CommandService, store: EventStore, tmp_path: Path
) -> None:
    lab = [_lab_host(tmp_path / "lab", n) for n in (1, 2, 3, 4)]
    _demo(service, store, tmp_path, lab=lab)
    asked = load_settings(environ={}, data_dir=str(tmp_path), up_hypervisor="test")
    with pytest.raises(SettingsError, match="are lab hosts; the test driver needs a new data"):
        up_hosts.start(asked, store, StopSignals())
    # Fewer hosts than registered: all of them run, and up says so.
    fewer = load_settings(environ={}, data_dir=str(tmp_path), up_hosts=2)
    with structlog.testing.capture_logs() as logs:
        assert up_hosts._count(fewer, "lab", 4) == 4
    assert [e["event"] for e in logs] == ["keeping every registered demo host"]
    assert up_hosts._count(fewer, "lab", 1) == 2


def test_a_lab_host_under_another_path_is_named_as_a_moved_data_directory(
    service: CommandService, store: EventStore, tmp_path: Path
) -> None:
    _demo(service, store, tmp_path / "before", lab=[_lab_host(tmp_path / "before" / "lab", 1)])
    with pytest.raises(Conflict, match="was the data directory moved"):
        _demo(service, store, tmp_path / "after", lab=[_lab_host(tmp_path / "after" / "lab", 1)])
