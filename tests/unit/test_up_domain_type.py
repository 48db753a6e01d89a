"""The domain type follows the effector's setting: TCG unless asked for KVM."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from cloud_engine.effectors.compute.domain_xml import domain_xml
from cloud_engine.effectors.compute.spec import DomainSpec
from cloud_engine.effectors.executor import Executor


def _spec(**extra: object) -> DomainSpec:
    return DomainSpec(uuid=uuid.uuid4(), name="vm", vcpus=1, memory_mb=128, **extra)  # type: ignore[arg-type]


def test_domains_are_tcg_unless_kvm_is_asked_for() -> None:
    assert ET.fromstring(domain_xml(_spec())).get("type") == "qemu"
    assert ET.fromstring(domain_xml(_spec(domain_type="kvm"))).get("type") == "kvm"
    assert Executor("effector@test").domain_type == "qemu"
    assert Executor("effector@test", domain_type="kvm").domain_type == "kvm"
