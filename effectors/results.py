"""Results: what an effector reports back, over Kafka, for the engine to
record as events.

One topic per deployment (`<prefix>.effector.results`), keyed by the
aggregate id so the results of one resource stay in order. Effectors hold no
database: the result message is their only output. Drift found by the
reconciler travels the same way, with kind "drift.*".
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec

from bus.topics import ensure_topics
from effectors.work import WorkKind

Outcome = Literal["succeeded", "failed"]
# A result answers a work item (effectors/work.py) or reports drift.
ResultKind = (
    WorkKind
    | Literal[
        "drift.vm_state",  # a VM not in the state the engine recorded
        "drift.unknown_domain",  # a domain on a host that the engine does not know
        "drift.volume",  # a volume missing or of the wrong size
        "host.unreachable",  # the host's libvirt connection keeps failing
    ]
)


class EffectorResult(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: UUID  # the work item's, or a drift report's own
    kind: ResultKind
    aggregate_id: UUID
    version: int  # the requesting event's version (0 for drift reports)
    outcome: Outcome
    host_id: UUID | None = None
    observed: str | None = None  # the state seen on the hypervisor
    expected: str | None = None  # the state the engine recorded (drift)
    error: str | None = None  # libvirt's (or the effector's) message
    error_code: int | None = None  # libvirt's error code
    effector: str = ""  # which effector instance reported it
    correlation_id: str = ""


def results_topic(prefix: str) -> str:
    return f"{prefix}.effector.results"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EffectorResult)


def encode(result: EffectorResult) -> bytes:
    return _encoder.encode(result)


def decode(raw: bytes) -> EffectorResult:
    return _decoder.decode(raw)


async def ensure_results_topic(bootstrap: str, prefix: str, partitions: int = 4) -> None:
    await ensure_topics(bootstrap, [results_topic(prefix)], partitions)
