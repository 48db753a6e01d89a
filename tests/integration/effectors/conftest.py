"""Real libvirtd + QEMU for the effector tests.

`./dev test` starts libvirtd (scripts/libvirt-host) before pytest. There is
no skip path: if qemu:///system (or CLOUD_ENGINE_TEST_LIBVIRT_URI) does not
answer, these tests fail with the reason.

Every test gets a name prefix of its own; whatever the test left on the host
under that prefix (domains, networks, storage pools and their volumes) is
removed afterwards, whether the test passed or failed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from template_server import Served, serve

from cloud_engine.effectors.hypervisor import Hypervisor
from tests.integration.libvirt_cleanup import clean_up


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    uri = os.environ.get("CLOUD_ENGINE_TEST_LIBVIRT_URI", "qemu:///system")
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError as e:
        pytest.fail(f"libvirt at {uri} does not answer ({e}); run scripts/libvirt-host")
    return uri


@pytest.fixture
def name_prefix() -> str:
    return f"ce-t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def hypervisor(libvirt_uri: str, name_prefix: str) -> Iterator[Hypervisor]:
    hv = Hypervisor(libvirt_uri)
    try:
        yield hv
    finally:
        clean_up(libvirt_uri, name_prefix)
        hv.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An HTTP server on loopback serving tmp_path/www (template images)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as s:
        yield s


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pools"
    path.mkdir()
    return path
