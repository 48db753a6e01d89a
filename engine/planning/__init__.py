"""The DeploymentPlanner: pure host and storage placement for one VM at a time."""

from cloud_engine.engine.planning.candidates import (
    STRATEGIES,
    AffinityKind,
    AffinityRule,
    Constraint,
    Elimination,
    HostCandidate,
    Placement,
    PlacementRequest,
    PlanResult,
    PoolCandidate,
    Refusal,
    Strategy,
    VolumeRequest,
    host_candidate,
    pool_candidate,
)
from cloud_engine.engine.planning.planner import Planner, plan

__all__ = [
    "STRATEGIES",
    "AffinityKind",
    "AffinityRule",
    "Constraint",
    "Elimination",
    "HostCandidate",
    "Placement",
    "PlacementRequest",
    "PlanResult",
    "Planner",
    "PoolCandidate",
    "Refusal",
    "Strategy",
    "VolumeRequest",
    "host_candidate",
    "plan",
    "pool_candidate",
]
