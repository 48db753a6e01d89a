"""The route table and the OpenAPI document generated from it."""

from __future__ import annotations

import json

import msgspec

from cloud_engine.api.app import http_routes
from cloud_engine.api.openapi import CHECKED_IN, build_document, document_bytes
from cloud_engine.api.resources import TYPES
from cloud_engine.api.route_table import COMMAND_ROUTES


def test_every_route_body_refuses_unknown_fields() -> None:
    for route in COMMAND_ROUTES:
        assert route.body.__struct_config__.forbid_unknown_fields, route.name


def test_operation_ids_are_unique() -> None:
    names = [r.name for r in COMMAND_ROUTES]
    assert len(names) == len(set(names))


def test_one_starlette_route_per_path() -> None:
    paths = [r.path for r in http_routes()]
    assert len(paths) == len(set(paths))
    assert "/v1/vms/{id:uuid}/start" in paths
    assert len(paths) >= 3 * len(TYPES)


def test_openapi_document_is_3_1_and_checked_in() -> None:
    document = build_document()
    assert document["openapi"] == "3.1.0"
    for route in COMMAND_ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.name
        assert "202" in operation["responses"]
        schema = document["components"]["schemas"][route.body.__name__]
        assert schema["additionalProperties"] is False
    deploy = document["components"]["schemas"]["ComputeSpec"]["properties"]["cpus"]
    assert deploy["minimum"] == 1
    assert json.loads(CHECKED_IN.read_text()) == json.loads(document_bytes()), (
        "schemas/openapi.json is out of date: run `python -m cloud_engine.api.openapi`"
    )


def test_problem_schema_names_field_and_rule() -> None:
    schema = build_document()["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(schema["required"])
    assert {"field", "rule", "instance"} <= set(schema["properties"])
    assert msgspec.json.decode(document_bytes())["info"]["title"] == "cloud-engine"


def test_openapi_refs_resolve_and_schemas_are_2020_12() -> None:
    from jsonschema import Draft202012Validator

    document = build_document()
    refs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for ref in refs:
        _, section, kind, name = ref.split("/")
        assert section == "components" and name in document["components"][kind], ref
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
