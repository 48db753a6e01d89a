"""Problem documents: msgspec messages turned into a field path, and
domain errors into statuses."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from cloud_engine.api.problems import (
    MEDIA_TYPE,
    ApiError,
    field_of,
    from_domain,
    invalid_body,
    invalid_query,
)
from cloud_engine.engine.errors import (
    CapacityExceeded,
    Conflict,
    InvalidTransition,
    NotFound,
    PlacementRefused,
    Validation,
)


class Spec(msgspec.Struct, forbid_unknown_fields=True):
    cpus: Annotated[int, msgspec.Meta(ge=1)]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    spec: Spec
    ids: list[int] = []


def _error(raw: bytes) -> msgspec.DecodeError:
    with pytest.raises(msgspec.DecodeError) as caught:
        msgspec.json.decode(raw, type=Body)
    return caught.value


@pytest.mark.parametrize(
    ("message", "text", "field"),
    [
        ("Expected `int` >= 1 - at `$.spec.cpus`", "Expected `int` >= 1", "spec.cpus"),
        ("Object missing required field `name`", "Object missing required field `name`", "name"),
        ("Object missing required field `cpus` - at `$.spec`",
         "Object missing required field `cpus`", "spec.cpus"),
        ("Object contains unknown field `z` - at `$.spec`",
         "Object contains unknown field `z`", "spec.z"),
        ("Invalid UUID - at `$.ids[3]`", "Invalid UUID", "ids[3]"),
        ("Expected `object`, got `array`", "Expected `object`, got `array`", None),
        ("Expected `str` - at `$`", "Expected `str`", None),
    ],
)  # fmt: skip
def test_field_of_names_the_path(message: str, text: str, field: str | None) -> None:
    assert field_of(message) == (text, field)


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{", 400, None),
        (b"\xff", 400, None),
        (b'{"name": "a", "spec": {"cpus": 1}} []', 400, None),
        (b"[]", 422, None),
        (b'{"name": 1, "spec": {"cpus": 1}}', 422, "name"),
        (b'{"name": "a", "spec": {"cpus": 0}}', 422, "spec.cpus"),
        (b'{"name": "a", "spec": {"cpus": 1, "ram": 2}}', 422, "spec.ram"),
        (b'{"spec": {"cpus": 1}}', 422, "name"),
        (b'{"name": "a", "spec": {"cpus": 1}, "ids": [1, "x"]}', 422, "ids[1]"),
    ],
)
def test_invalid_body_status_and_field(raw: bytes, status: int, field: str | None) -> None:
    error = invalid_body(_error(raw))
    assert (error.status, error.field) == (status, field)
    problem = error.problem("/v1/x", "rid")
    assert problem.status == status
    assert problem.type.startswith("urn:cloudengine:problem:")
    assert problem.instance == "/v1/x" and problem.request_id == "rid"
    if field:
        assert field in problem.detail


def test_invalid_query_is_400_naming_the_parameter() -> None:
    class Query(msgspec.Struct, forbid_unknown_fields=True):
        limit: Annotated[int, msgspec.Meta(le=500)] = 50

    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({"limit": "900"}, Query, strict=False)
    error = invalid_query(caught.value)
    assert (error.status, error.field) == (400, "limit")


@pytest.mark.parametrize(
    ("error", "status", "rule"),
    [
        (Validation("bad", field="spec.cpus"), 422, "validation"),
        (NotFound("gone"), 404, "not-found"),
        (InvalidTransition("vm x", "Running", "start"), 409, "invalid-transition"),
        (CapacityExceeded("full"), 409, "capacity-exceeded"),
        (PlacementRefused("no"), 409, "placement-refused"),
        (Conflict("raced"), 409, "conflict"),
    ],
)
def test_domain_errors_map_to_statuses(error: Exception, status: int, rule: str) -> None:
    api_error = from_domain(error)  # type: ignore[arg-type]
    assert (api_error.status, api_error.rule) == (status, rule)
    assert api_error.detail == str(error)


def test_reused_idempotency_key_is_422() -> None:
    error = from_domain(Conflict("used with a different command", field="Idempotency-Key"))
    assert error.status == 422
    assert error.field == "Idempotency-Key"
    assert error.code == "idempotency-key-reused"


def test_problem_document_is_rfc9457_shaped() -> None:
    problem = ApiError(409, "conflict", "busy", rule="conflict").problem()
    encoded = msgspec.json.decode(msgspec.json.encode(problem))
    assert encoded == {
        "type": "urn:cloudengine:problem:conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "busy",
        "rule": "conflict",
    }
    assert MEDIA_TYPE == "application/problem+json"
