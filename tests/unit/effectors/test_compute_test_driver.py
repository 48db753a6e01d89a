"""ComputeDriver on libvirt's test driver, which up's demo hosts and the
benchmarks use: the whole domain life, expunge's undefine included (the test
driver refuses the checkpoint and NVRAM undefine flags as unsupported)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cloud_engine.effectors.compute.driver import ComputeDriver
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec
from cloud_engine.effectors.hypervisor import Hypervisor


@pytest.fixture
def driver() -> Iterator[ComputeDriver]:
    hypervisor = Hypervisor("test:///default")
    try:
        yield ComputeDriver(hypervisor, poll_interval_s=0.01)
    finally:
        hypervisor.close()


def test_domain_defined_started_destroyed_and_undefined(driver: ComputeDriver) -> None:
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"ut-{uuid.uuid4().hex[:8]}",
        vcpus=1,
        memory_mb=64,
        disks=(DiskSpec(path="/nonexistent/root.qcow2"),),
    )
    driver.define(spec)
    assert driver.start(spec.uuid).state.state == "running"
    assert driver.destroy(spec.uuid).state.state == "shutoff"

    undefined = driver.undefine(spec.uuid)

    assert undefined.changed and not undefined.state.exists
    assert not driver.undefine(spec.uuid).changed  # repeating is a no-op


def test_running_domain_is_powered_off_and_undefined(driver: ComputeDriver) -> None:
    spec = DomainSpec(uuid=uuid.uuid4(), name=f"ut-{uuid.uuid4().hex[:8]}", vcpus=1, memory_mb=64)
    driver.define(spec)
    driver.start(spec.uuid)

    assert driver.undefine(spec.uuid).state.state == "absent"
    assert not driver.observe(spec.uuid).exists
