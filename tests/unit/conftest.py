"""Unit-test setup: pytest rewrites the asserts of the shared helpers as well, so
a failing check in tests.unit.support explains itself like one in a test module."""

import pytest

pytest.register_assert_rewrite("tests.unit.support", "tests.unit.operation_world")


@pytest.fixture
def world():
    """A small fabric on an in-memory unit of work (tests/unit/operation_world.py)."""
    from tests.unit.operation_world import World

    return World()
