"""Generates client/verbs.py, the CLI's verb table, from schemas/openapi.json.

Every operation of the API becomes a noun and a verb (`vm deploy`,
`host enter-maintenance`, `volume list`), its path parameters positionals,
its query parameters and request-body fields options. The table is a Python
literal so the CLI reads it at import (no JSON parsing at start-up); a test
fails when it is older than the OpenAPI document.

    python -m cloud_engine.client.gen
"""

from __future__ import annotations

import json
import pprint
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "schemas" / "openapi.json"
TARGET = Path(__file__).resolve().parent / "verbs.py"

# Collection -> noun (the word a person types).
NOUNS = {
    "vms": "vm",
    "volumes": "volume",
    "snapshots": "snapshot",
    "networks": "network",
    "nics": "nic",
    "ip-addresses": "ip",
    "network-rules": "rule",
    "zones": "zone",
    "pods": "pod",
    "clusters": "cluster",
    "hosts": "host",
    "storage-pools": "pool",
    "image-stores": "image-store",
    "physical-networks": "physical-network",
    "templates": "template",
    "operations": "operation",
    "tokens": "token",
    "quotas": "quota",
    "accounts": "account",
}

Doc = dict[str, Any]


def _resolve(doc: Doc, schema: Doc) -> Doc:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def _kind(doc: Doc, schema: Doc) -> tuple[str, list[str] | None]:
    """A field's shape as the CLI parses it: str, int, float, bool, list-str,
    list-int, json (anything nested) and, for enums, the choices."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            return _kind(doc, options[0])
        return "json", None
    if "enum" in schema:
        return "str", [str(v) for v in schema["enum"]]
    kind = schema.get("type")
    if kind == "integer":
        return "int", None
    if kind == "number":
        return "float", None
    if kind == "boolean":
        return "bool", None
    if kind == "array":
        item, _ = _kind(doc, schema.get("items", {}))
        return ("list-" + item, None) if item in ("str", "int") else ("json", None)
    if kind == "string":
        return "str", None
    return "json", None


def _fields(doc: Doc, schema: Doc) -> list[Doc]:
    """Body fields, nested objects flattened one level (spec.cpus -> --cpus
    unless a top-level field already has that name)."""
    schema = _resolve(doc, schema)
    required = set(schema.get("required", ()))
    top = schema.get("properties", {})
    out: list[Doc] = []
    for name, prop in top.items():
        inner = _resolve(doc, prop)
        if inner.get("type") == "object" and inner.get("properties"):
            inner_required = set(inner.get("required", ()))
            for sub, sub_prop in inner["properties"].items():
                kind, choices = _kind(doc, sub_prop)
                flag = sub if sub not in top else f"{name}_{sub}"
                out.append(
                    {
                        "path": [name, sub],
                        "flag": flag.replace("_", "-"),
                        "kind": kind,
                        "choices": choices,
                        "required": name in required and sub in inner_required,
                        "help": _help(doc, sub_prop),
                    }
                )
            continue
        kind, choices = _kind(doc, prop)
        out.append(
            {
                "path": [name],
                "flag": name.replace("_", "-"),
                "kind": kind,
                "choices": choices,
                "required": name in required,
                "help": _help(doc, prop),
            }
        )
    return out


def _help(doc: Doc, schema: Doc) -> str:
    schema = _resolve(doc, schema)
    for option in schema.get("anyOf", ()):
        if "description" in option:
            return str(option["description"]).split(". ")[0]
    text = str(schema.get("description", ""))
    return text.split(". ")[0]


def table(doc: Doc) -> dict[str, dict[str, Doc]]:
    nouns: dict[str, dict[str, Doc]] = {}
    for path, methods in doc["paths"].items():
        parts = path.strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2 or parts[1] not in NOUNS:
            continue
        noun = NOUNS[parts[1]]
        for method, op in methods.items():
            if not isinstance(op, dict) or "operationId" not in op:
                continue
            rest = parts[2:]
            if method == "get":
                verb = {0: "list", 1: "show"}.get(len(rest)) or rest[-1]
            elif len(rest) == 0:
                verb = re.match(r"[a-z]+", op["operationId"]).group(0)  # type: ignore[union-attr]
            else:
                verb = rest[-1]
            params = [_resolve_param(doc, p) for p in op.get("parameters", ())]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            accepted = op.get("responses", {}).get("202", {})
            nouns.setdefault(noun, {})[verb] = {
                "method": method.upper(),
                "path": path,
                "summary": op.get("summary", ""),
                "operation": "operation" in accepted.get("links", {}),
                "command": bool(accepted),
                "query": [
                    {
                        "name": p["name"],
                        "kind": _kind(doc, p.get("schema", {}))[0],
                        "help": str(p.get("description", "")),
                    }
                    for p in params
                    if p.get("in") == "query"
                ],
                "body": _fields(doc, body["schema"]) if "schema" in body else [],
            }
    return {noun: dict(sorted(verbs.items())) for noun, verbs in sorted(nouns.items())}


def _resolve_param(doc: Doc, param: Doc) -> Doc:
    if "$ref" in param:
        name = param["$ref"].rsplit("/", 1)[1]
        return dict(doc["components"]["parameters"][name])
    return param


def render(doc: Doc) -> str:
    body = pprint.pformat(table(doc), width=100, sort_dicts=False)
    return (
        '"""The CLI\'s verb table, generated from schemas/openapi.json by\n'
        '`python -m cloud_engine.client.gen`: do not edit."""\n\n'
        "from __future__ import annotations\n\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from typing import Any\n\n"
        f"VERBS: dict[str, dict[str, dict[str, Any]]] = {body}\n"
    )


def main() -> int:
    text = render(json.loads(OPENAPI.read_text()))
    if "--check" in sys.argv:
        if TARGET.read_text() != text:
            print(f"{TARGET.name} is stale: python -m cloud_engine.client.gen", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
