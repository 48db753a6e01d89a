"""Effector results: what an effector reports back, over Kafka, for the
engine to record as events.

One topic per deployment (`<prefix>.effector.results`), keyed by the
aggregate id so the results of one resource stay in order, one JSON object
per result. Effectors hold no database: the result message is their only
output. Drift found by the reconciler travels the same way (REPORT_KINDS).
In bus/ beside the work kinds (bus/work.py) because the effectors write
these and orchestration reads them, and neither imports the other.

On the wire the work id was called "operation_id" until it was renamed
(it never was an engine Operation's id). Results are now written with
both names, so an engine from before the rename still records them, and
read with either, so results written before the rename and still on the
topic are recorded after an upgrade.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import msgspec

from cloud_engine.bus.topics import ensure_topics
from cloud_engine.bus.work import KINDS

# Not engine.commands.base.Outcome (what a command handler returns): whether
# the effector did the work.
ResultOutcome = Literal["succeeded", "failed"]

# What the reconciler reports besides the answers to work items (whose
# kinds are those of bus.work.KINDS).
REPORT_KINDS = frozenset(
    {
        "drift.vm_state",  # a VM not in the state the engine recorded
        "drift.unknown_domain",  # a domain on a host that the engine does not know
        "drift.volume",  # a volume missing or of the wrong size
        "host.unreachable",  # the host's libvirt connection keeps failing
        "drift.network_rule",  # a rule missing on its router, put back
        "host.reachable",  # a host not recorded Up answers (again)
        "drift.host_pool",  # a shared pool a host could not define or start
    }
)


class EffectorResult(msgspec.Struct, frozen=True, kw_only=True):
    # The work item's id (bus.work.work_id), or a drift report's own: the
    # engine records a result once per (work_id, outcome).
    work_id: UUID
    kind: str  # a work kind (bus.work.KINDS) or one of REPORT_KINDS
    aggregate_id: UUID
    version: int  # the requesting event's version (0 for drift reports)
    outcome: ResultOutcome
    host_id: UUID | None = None
    observed: str | None = None  # the state seen on the hypervisor
    expected: str | None = None  # the state the engine recorded (drift)
    error: str | None = None  # libvirt's (or the effector's) message
    error_code: int | None = None  # libvirt's error code
    effector: str = ""  # which effector instance reported it
    # The work item's: the engine Operation's id when one asked for the work.
    correlation_id: str = ""

    def __post_init__(self) -> None:
        # A kind nobody records is a malformed result, not one to skip quietly.
        if self.kind not in KINDS and self.kind not in REPORT_KINDS:
            raise ValueError(f"{self.kind!r} is not a work or report kind")


def results_topic(prefix: str) -> str:
    return f"{prefix}.effector.results"


_LEGACY_ID = "operation_id"  # the work id's name on the wire before the rename

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EffectorResult)
_any_decoder = msgspec.json.Decoder(dict[str, Any])


def encode(result: EffectorResult) -> bytes:
    # Engines from before the rename require the old name (they would drop
    # the result as malformed): written under both until none runs.
    return _encoder.encode({_LEGACY_ID: result.work_id, **msgspec.structs.asdict(result)})


def decode(raw: bytes) -> EffectorResult:
    """A result, written by this version or by one from before the rename.
    Raises msgspec.ValidationError or msgspec.DecodeError (ValueErrors) on
    anything else."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        fields = _any_decoder.decode(raw)
        if "work_id" in fields or _LEGACY_ID not in fields:
            raise
        fields["work_id"] = fields.pop(_LEGACY_ID)
        return msgspec.convert(fields, EffectorResult)


async def ensure_results_topic(bootstrap: str, prefix: str, partitions: int = 4) -> None:
    await ensure_topics(bootstrap, [results_topic(prefix)], partitions)
