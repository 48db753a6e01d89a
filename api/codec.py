"""JSON in and out through msgspec: request bodies decoded straight into the
contract's Structs, responses encoded without building dicts first."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cloud_engine.api.problems import MEDIA_TYPE, ApiError, Problem, bad_request, invalid_body

JSON = "application/json"
MAX_BODY_BYTES = 1 << 20

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(value), status_code=status, headers=headers, media_type=JSON)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(problem),
        status_code=problem.status,
        headers=headers,
        media_type=MEDIA_TYPE,
    )


_decoders: dict[object, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: object) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


# JSON Schema counts 2.0 as an integer (a number with no fractional part), so
# the document promises that an integer field takes it; msgspec's typed
# decoder refuses any float for an int, and its lax mode would also take "2"
# and "true", which the document does not allow. A body the typed decoder
# refuses for a float is decoded again with every integral number made an
# int, then checked strictly: 2.0 and 2e0 pass, 2.5 and "2" do not. Past 2**64
# a number stays a float (refused for an int field, as it is out of every
# integer field's range): int(Decimal("1e999999999")) would take minutes.
_INTEGRAL_LIMIT = Decimal(2**64)


def _number(literal: str) -> int | float:
    try:
        value = Decimal(literal)
        if value == value.to_integral_value() and abs(value) <= _INTEGRAL_LIMIT:
            return int(value)
    except InvalidOperation:  # a literal Decimal cannot take; let float() judge it
        pass
    return float(literal)


_integral = msgspec.json.Decoder(float_hook=_number)


def decode_json(body: bytes, kind: type[T]) -> T:
    """`body` as a `kind`, integral numbers accepted for int fields; raises
    msgspec.DecodeError (or its ValidationError) like a Decoder."""
    try:
        decoded: T = _decoder(kind).decode(body)
    except msgspec.ValidationError as error:
        # The fast path holds for every body without an integral float.
        if "got `float`" not in str(error):
            raise
        decoded = msgspec.convert(_integral.decode(body), kind, strict=True)
    return decoded


def optional_body(kind: type[msgspec.Struct]) -> bool:
    """A body whose every field has a default may be left out entirely."""
    return all(not f.required for f in msgspec.structs.fields(kind))


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    # Counted while streaming, so a huge body is refused before it is in memory.
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body-too-large", f"request body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody reads the answer; this keeps it out of the 500s and the error log.
        raise bad_request("the client closed the connection before the body was sent") from None
    return b"".join(chunks)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, kind: type[T]) -> T:
    """The body decoded into `kind`; ApiError 400/413/415/422 when it cannot be."""
    body = await read_body(request)
    if not body.strip():
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct) and optional_body(kind):
            body = b"{}"
        else:
            raise bad_request("a JSON request body is required")
    elif not _is_json(request.headers.get("content-type", "")):
        raise ApiError(
            415,
            "unsupported-media-type",
            "request body must be application/json",
            field="Content-Type",
        )
    try:
        return decode_json(body, kind)
    except msgspec.DecodeError as error:
        raise invalid_body(error) from None
