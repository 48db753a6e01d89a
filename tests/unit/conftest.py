"""Unit-test setup: pytest rewrites the asserts of the shared helpers as well, so
a failing check in tests.unit.support explains itself like one in a test module."""

import pytest

pytest.register_assert_rewrite("tests.unit.support")
