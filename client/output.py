"""What the CLI prints: a table for people (the default), JSON or YAML for
scripts (`-o json|yaml`: the API's documents as they came)."""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Columns of a list, per noun; every resource has id, name and state.
COLUMNS: dict[str, tuple[str, ...]] = {
    "vm": ("id", "name", "state", "account", "host_id", "cpus", "ram_mb"),
    "operation": ("id", "kind", "state", "resource_id", "current_step", "error"),
    "volume": ("id", "name", "state", "account", "vm_id", "size_bytes"),
    "host": ("id", "name", "state", "cpus_used", "cpus_total", "ram_used_mb", "ram_total_mb"),
    "ip": ("id", "address", "state", "network_id", "owner_id"),
    "token": ("id", "role", "account", "expires_at", "revoked_at", "created_at"),
    "quota": ("limit", "used", "max"),
}
DEFAULT_COLUMNS = ("id", "name", "state", "account", "zone_id")


def field(item: dict[str, Any], name: str) -> Any:
    """A column's value: a top-level member, else an attribute, else one
    level deeper in the attributes (a VM's spec.cpus)."""
    if name in item:
        return item[name]
    attributes = item.get("attributes")
    if isinstance(attributes, dict):
        if name in attributes:
            return attributes[name]
        for value in attributes.values():
            if isinstance(value, dict) and name in value:
                return value[name]
    return None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def items_table(noun: str, items: list[dict[str, Any]]) -> str:
    columns = COLUMNS.get(noun, DEFAULT_COLUMNS)
    if items:
        # Leave out columns no row has (an admin's fabric has no account).
        columns = tuple(c for c in columns if any(field(i, c) is not None for i in items))
    return table([[_cell(field(i, c)) for c in columns] for i in items], list(columns))


def details(document: dict[str, Any]) -> str:
    """One resource as `key  value` lines, its attributes after its own fields."""
    rows: list[list[str]] = []
    for key, value in document.items():
        if key == "attributes" and isinstance(value, dict):
            for sub, inner in value.items():
                rows.append([sub, _cell(inner) if not isinstance(inner, str) else inner])
        else:
            rows.append([key, _cell(value) if not isinstance(value, str) else value])
    width = max((len(r[0]) for r in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# YAML ----------------------------------------------------------------------------
# A small emitter (the API's documents are JSON: maps, lists, strings, numbers,
# booleans, null) so YAML output needs no extra package. Strings that YAML
# would read as something else are written as JSON strings, which YAML reads.

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_ ./:@+-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    plain = _PLAIN.match(text) and text.lower() not in _RESERVED
    if plain and not text.endswith((" ", ":")) and ": " not in text and " #" not in text:
        return text
    return json.dumps(text)


def yaml(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}"
        lines = []
        for key, inner in value.items():
            if isinstance(inner, dict | list) and inner:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.append(yaml(inner, indent + 1))
            else:
                lines.append(f"{pad}{_scalar(key)}: {yaml(inner).strip()}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return pad + "[]"
        lines = []
        for inner in value:
            if isinstance(inner, dict | list) and inner:
                block = yaml(inner, indent + 1)
                lines.append(f"{pad}- {block.lstrip()}")
            else:
                lines.append(f"{pad}- {yaml(inner).strip()}")
        return "\n".join(lines)
    return pad + _scalar(value)


def emit(value: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(value, indent=2)
    return yaml(value)
