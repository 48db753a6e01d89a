"""Unit-test fixtures. The shared helpers' asserts are rewritten as well (the
registration is in tests/conftest.py), so a failing check in
tests.unit.support explains itself like one in a test module."""

import pytest


@pytest.fixture
def world():
    """A small fabric on an in-memory unit of work (tests/unit/operation_world.py)."""
    from tests.unit.operation_world import World

    return World()
