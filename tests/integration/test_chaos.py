"""The chaos run's CI version (bench/chaos.py): at least 10 SIGKILLs of the
API, relay, projection worker, engine, effector, automation, broker and
PostgreSQL (every kind at least once) under an HTTP workload of VMs,
volumes and networks, each started again as a supervisor would, and then
none of the checks finds a violation: every operation ended, nothing left
transitional or unsettled, host capacity equal to the VMs placed, read
models equal to their rebuild, audit chains intact, every event delivered
in order per aggregate.
Seeded: CLOUD_ENGINE_CHAOS_SEED replays a failing run."""

from __future__ import annotations

import os

import pytest

from tests.integration.chaos_run import run_chaos

pytestmark = pytest.mark.postgres


def test_a_short_chaos_run_kills_every_kind_of_part_and_loses_nothing() -> None:
    seed = os.environ.get("CLOUD_ENGINE_CHAOS_SEED", "23")
    run_chaos(
        # 12 faults, every kind first (8), about 4 s apart, under 2 clients:
        # within the budget of 4 minutes for the whole run (171 s
        # at load 11; 4 clients left a backlog the grace did not drain).
        [
            *("--faults", "12", "--every", "4"),
            # A quarter of the commands are on volumes and networks.
            *("--seconds", "100", "--grace", "90", "--clients", "2", "--seed", seed),
        ],
        faults=10,
        timeout=900,
    )
