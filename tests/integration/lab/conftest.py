"""A real lab for these tests: hosts in namespaces, each its own libvirtd.

Needs root and the packages scripts/libvirt-host installs; there is no skip
path. One lab of three hosts is shared by the module's tests (each puts back
what it changes: a host powered off is powered on, a partition healed); the
tests of cleanup start labs of their own. State directories are short paths
under /tmp: libvirt's socket paths must fit in 107 bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_engine.lab import Lab, LabHost
from tests.integration.lab.lab_cloud import cloud, guest_cloud  # noqa: F401  (fixtures)


def new_state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="celab-t", dir="/tmp"))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    state_dir = new_state_dir()
    the_lab = Lab(state_dir)
    try:
        the_lab.up(3)
        yield the_lab
    finally:
        the_lab.down(wipe=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def hosts(lab: Lab) -> list[LabHost]:
    """The three hosts, running (a test before may have cycled one)."""
    return lab.up(3)


@pytest.fixture
def own_lab() -> Iterator[Lab]:
    """A lab of the test's own, for tests that break or remove it."""
    state_dir = new_state_dir()
    the_lab = Lab(state_dir)
    try:
        yield the_lab
    finally:
        the_lab.down(wipe=True)
        shutil.rmtree(state_dir, ignore_errors=True)
