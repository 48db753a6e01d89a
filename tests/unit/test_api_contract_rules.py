"""The OpenAPI document states the rules the server applies, and the server
takes what the document allows: the Idempotency-Key header, query
parameters, integers written as 2.0, and the links from every command."""

from __future__ import annotations

import ipaddress
import re
import string
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from starlette.datastructures import Headers

from cloud_engine.api.codec import decode_json
from cloud_engine.api.context import idempotency_key
from cloud_engine.api.contract_fabric import HostRegister
from cloud_engine.api.contract_tenant import VolumeCreate
from cloud_engine.api.fields import Address, Cidr
from cloud_engine.api.openapi import IDEMPOTENCY_KEY_SCHEMA, build_document
from cloud_engine.api.problems import ApiError
from cloud_engine.api.resources import QUERY_TYPES, TYPES, EventQuery
from cloud_engine.api.route_table import COMMAND_ROUTES

DOCUMENT = build_document()
FORMATS = Draft202012Validator.FORMAT_CHECKER
ZONE = "6f1c2b3a-0000-4000-8000-000000000001"


# Idempotency-Key -------------------------------------------------------------


def _server_takes(value: str) -> bool:
    try:
        idempotency_key(Headers({"idempotency-key": value}))
    except ApiError:
        return False
    return True


_document_takes = Draft202012Validator(IDEMPOTENCY_KEY_SCHEMA).is_valid

# What can reach the app in a header value: HTTP strips leading and trailing
# spaces and tabs and refuses control characters; the rules are about ASCII.
_header_text = st.text(alphabet=string.printable[:-5] + " \t", max_size=260).filter(
    lambda v: v == v.strip(" \t") and v != ""
)


@given(_header_text | st.from_regex(r'^"[!-~]{0,256}"$', fullmatch=True))
@example('""')
@example('"' + "k" * 255 + '"')
@example('"' + "k" * 256 + '"')
@example("k" * 255)
@example("k" * 256)
@example('"')
@example('"""')
@example("a b")
@example("abc\xa0")
def test_idempotency_key_schema_is_the_servers_rule(value: str) -> None:
    assert _document_takes(value) == _server_takes(value), value


def test_every_command_takes_the_idempotency_key() -> None:
    for route in COMMAND_ROUTES:
        operation = DOCUMENT["paths"][route.path][route.method.lower()]
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]


# Query parameters -------------------------------------------------------------


def _query_parameters(path: str) -> dict[str, dict[str, Any]]:
    parameters = DOCUMENT["paths"][path]["get"]["parameters"]
    return {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}


@pytest.mark.parametrize("resource", TYPES, ids=lambda t: t.type)
def test_query_parameters_are_the_servers(resource: Any) -> None:
    listed = _query_parameters(f"/v1/{resource.collection}")
    fields = [f.encode_name for f in msgspec.structs.fields(QUERY_TYPES[resource.type])]
    assert list(listed) == fields
    events = _query_parameters(f"/v1/{resource.collection}/{{id}}/events")
    assert list(events) == [f.encode_name for f in msgspec.structs.fields(EventQuery)]
    for name, schema in {**listed, **events}.items():
        # An empty value is a 400; the document must not allow one.
        checked = Draft202012Validator(schema, format_checker=FORMATS)
        assert not checked.is_valid(""), name
        if schema.get("type") == "string" and "format" not in schema:
            assert schema["minLength"] >= 1, name


# Addresses --------------------------------------------------------------------------


def _pattern(annotated: Any) -> re.Pattern[str]:
    return re.compile(typing.get_args(annotated)[1].pattern)


def _python_takes(text: str, kind: type[Any]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


@given(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){3}", fullmatch=True))
@example("255.255.255.255")
@example("256.0.0.1")
@example("01.2.3.4")
@example("0.0.0.0")
def test_the_address_pattern_is_what_the_engine_takes(text: str) -> None:
    # The engine reads addresses with ipaddress: no 256, no leading zero.
    takes = _python_takes(text, ipaddress.IPv4Address)
    assert bool(_pattern(Address).search(text)) == takes, text


@given(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){3}/[0-9]{1,2}", fullmatch=True))
@example("10.0.0.0/08")
@example("10.0.0.0/33")
@example("0.0.0.0/0")
def test_the_cidr_pattern_is_what_the_engine_takes(text: str) -> None:
    # Host bits set is the engine's 422 (strict=True there), not the pattern's.
    takes = _python_takes(text, lambda t: ipaddress.IPv4Network(t, strict=False))
    assert bool(_pattern(Cidr).search(text)) == takes, text


# Integers ---------------------------------------------------------------------------


def _integer_schemas(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            found.append(node)
        for value in node.values():
            found += _integer_schemas(value)
    elif isinstance(node, list):
        for value in node:
            found += _integer_schemas(value)
    return found


def test_every_integer_of_a_request_is_bounded() -> None:
    # api.codec turns an integral number into an int only up to 2**64 (past
    # that it stays a float and is refused): right while every integer a
    # request takes has bounds inside that.
    schemas = DOCUMENT["components"]["schemas"]
    bodies = {route.body.__name__ for route in COMMAND_ROUTES}
    nested = {"ComputeSpec", "TagRange"}
    for name in bodies | nested:
        for node in _integer_schemas(schemas[name]):
            assert "minimum" in node and "maximum" in node, (name, node)
            assert abs(node["minimum"]) <= 2**64 and abs(node["maximum"]) <= 2**64, name


def _volume(size: str) -> bytes:
    return f'{{"name": "v", "zone_id": "{ZONE}", "size_gb": {size}}}'.encode()


@pytest.mark.parametrize("size", ["2", "2.0", "2e0", "0.2e1", "2.000", "20E-1"])
def test_an_integral_number_is_an_integer(size: str) -> None:
    assert decode_json(_volume(size), VolumeCreate).size_gb == 2


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("2.5", "Expected `int`, got `float` - at `$.size_gb`"),
        ('"2"', "Expected `int`, got `str` - at `$.size_gb`"),
        ("true", "Expected `int`, got `bool` - at `$.size_gb`"),
        ("0.0", "Expected `int` >= 1 - at `$.size_gb`"),
        ("1e5", "Expected `int` <= 65536 - at `$.size_gb`"),
        ("1e30", "Expected `int`, got `float` - at `$.size_gb`"),
        ("1e999999999", "Number out of range - at `$.size_gb`"),
    ],
)
def test_other_numbers_are_refused_as_before(size: str, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        decode_json(_volume(size), VolumeCreate)


def test_a_float_field_takes_integers_and_fractions() -> None:
    fields = {"zone_id": ZONE, "pod_id": ZONE, "cluster_id": ZONE, "name": "h"}
    text = msgspec.json.encode(fields).decode()[:-1]
    body = (
        text + ', "cpu_cores": 8.0, "ram_mb": 1024, "libvirt_uri": "test:///default",'
        ' "cpu_overcommit": 2, "ram_overcommit": 1.5}'
    )
    host = decode_json(body.encode(), HostRegister)
    assert (host.cpu_cores, host.cpu_overcommit, host.ram_overcommit) == (8, 2.0, 1.5)
    assert type(host.cpu_overcommit) is float


def test_a_body_that_is_not_json_is_still_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError) as raised:
        decode_json(b'{"name": 2.0', VolumeCreate)
    assert not isinstance(raised.value, msgspec.ValidationError)


# Links ------------------------------------------------------------------------------


OPERATIONS = {
    operation["operationId"]: (path, operation)
    for path, item in DOCUMENT["paths"].items()
    for operation in item.values()
    if "operationId" in operation
}


@pytest.mark.parametrize("route", COMMAND_ROUTES, ids=lambda r: r.name)
def test_each_command_links_to_its_resource_and_operation(route: Any) -> None:
    operation = DOCUMENT["paths"][route.path][route.method.lower()]
    links = operation["responses"]["202"]["links"]
    assert links["resource"]["parameters"] == {"id": "$response.body#/resource_id"}
    target_path, _ = OPERATIONS[links["resource"]["operationId"]]
    assert target_path.startswith(route.path.split("/{id}")[0] + "/{id}")
    if route.operation:
        assert links["operation"] == {
            "operationId": "getOperation",
            "parameters": {"id": "$response.body#/operation_id"},
            "description": links["operation"]["description"],
        }
    else:
        # operation_id is null: nothing to follow.
        assert "operation" not in links
    actions = {r.name for r in COMMAND_ROUTES if r.target == route.resource}
    assert actions <= set(links)
    for name, link in links.items():
        assert re.fullmatch(r"[A-Za-z0-9.\-_]+", name)
        path, target = OPERATIONS[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", []) if "name" in p}
        for parameter in link["parameters"]:
            assert parameter.removeprefix("query.") in names, (name, parameter)
        if "{id}" in path:
            assert "id" in link["parameters"], name
