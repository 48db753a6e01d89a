"""Effector results on the wire: written with the work id under its new and
its old name, read with either, so results cross an upgrade in both
directions."""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec
import pytest

from cloud_engine.bus.work import work_id
from cloud_engine.bus.work_results import EffectorResult, decode, encode
from cloud_engine.orchestration.recorder import command_for, context_for

AGGREGATE = uuid.UUID("00000000-0000-4000-8000-000000000001")
WORK = work_id(AGGREGATE, 7)

# A result as effectors wrote it before the work id was renamed (bytes
# taken from that code's encode()).
BEFORE = (
    b'{"operation_id":"104f80c9-85b2-5e3c-95fa-555def7fb3aa","kind":"vm.start",'
    b'"aggregate_id":"00000000-0000-4000-8000-000000000001","version":7,'
    b'"outcome":"succeeded","host_id":null,"observed":"running","expected":null,'
    b'"error":null,"error_code":null,"effector":"effector@old",'
    b'"correlation_id":"6a1f0d4e-0000-4000-8000-00000000000a"}'
)


class ResultBefore(msgspec.Struct, frozen=True, kw_only=True):
    """EffectorResult as an engine from before the rename decodes it."""

    operation_id: uuid.UUID
    kind: str
    aggregate_id: uuid.UUID
    version: int
    outcome: Literal["succeeded", "failed"]
    host_id: uuid.UUID | None = None
    observed: str | None = None
    expected: str | None = None
    error: str | None = None
    error_code: int | None = None
    effector: str = ""
    correlation_id: str = ""


def result(**changes: object) -> EffectorResult:
    fields: dict[str, object] = {
        "work_id": WORK,
        "kind": "vm.start",
        "aggregate_id": AGGREGATE,
        "version": 7,
        "outcome": "succeeded",
        "observed": "running",
        "effector": "effector@old",
        "correlation_id": "6a1f0d4e-0000-4000-8000-00000000000a",
    }
    fields.update(changes)
    return EffectorResult(**fields)  # type: ignore[arg-type]


def test_a_result_written_now_round_trips():
    failed = result(outcome="failed", error="no space", error_code=38, host_id=uuid.uuid4())
    assert decode(encode(failed)) == failed


def test_a_result_written_before_the_rename_is_read_and_recorded_as_before():
    old = decode(BEFORE)
    assert old == result()
    assert old.work_id == WORK
    context = context_for(old)
    assert context.idempotency_key == f"effector:{WORK}:succeeded"
    assert context.causation_id == str(WORK)
    assert command_for(old) is not None


def test_an_engine_from_before_the_rename_reads_a_result_written_now():
    seen = msgspec.json.decode(encode(result()), type=ResultBefore)
    assert seen == msgspec.json.decode(BEFORE, type=ResultBefore)


def test_with_both_names_the_new_one_is_read():
    raw = msgspec.json.decode(encode(result()))
    other = uuid.uuid4()
    raw["operation_id"] = str(other)
    assert decode(msgspec.json.encode(raw)).work_id == WORK


@pytest.mark.parametrize(
    "raw",
    [
        BEFORE.replace(b'"vm.start"', b'"vm.teleport"'),  # a kind nobody records
        BEFORE.replace(b'"operation_id"', b'"op"'),  # no id at all
        BEFORE.replace(b'"succeeded"', b'"maybe"'),
        b"[]",
        b"{",
    ],
)
def test_malformed_results_are_refused(raw: bytes):
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        decode(raw)
