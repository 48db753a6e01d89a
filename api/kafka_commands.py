"""Engine commands as a client sends them over Kafka, back to the HTTP
route that builds them, so they pass the very same checks.

A command on the commands topic is an engine command (its ce_type is the
class name, its value the JSON of schemas/commands/<ce_type>.json). The
route table (api/route_table.py) says how an HTTP body becomes such a
command; this module goes the other way: it finds the route that builds
the command's type (and kind, for VmOperation and the like), turns the
command back into that route's body and resource id, and builds the
command again from them. Only if the rebuilt command is the one sent does
the call go on, through api.commands.run_call like an HTTP request: a
field the API never sets (an operation_id chosen by the client, a size that
is not whole GiB) is refused, never passed through, and a route added to
the table is offered over Kafka with no change here unless its body
renames a field of the command (BODY_FIELDS).

Which route builds which command is found once, by building each route's
command from a placeholder body (Struct constructors do not validate).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import msgspec
import msgspec.inspect as mi

from cloud_engine.api.auth import Principal
from cloud_engine.api.problems import ApiError, invalid_body
from cloud_engine.api.route_table import COMMAND_ROUTES
from cloud_engine.api.routing import Call, CommandRoute
from cloud_engine.engine.commands import HANDLERS, Command
from cloud_engine.engine.commands.compute import GIB

Values = dict[str, Any]


def _gib(field: str) -> Callable[[Values], int]:
    def whole(values: Values) -> int:
        size = values.get(field)
        if not isinstance(size, int) or size % GIB:
            raise ApiError(
                422, "invalid-body", f"{field} must be a whole number of GiB", field=field
            )
        return size // GIB

    return whole


# Body fields whose command field has another name or unit, by route: the
# body field -> how to read it from the command's values.
BODY_FIELDS: dict[str, dict[str, Callable[[Values], Any]]] = {
    "createVolume": {"size_gb": _gib("size_bytes")},
    "resizeVolume": {"size_gb": _gib("new_size_bytes")},
    "snapshotVolume": {
        "name": lambda v: v.get("snapshot_name"),
        "kind": lambda v: v.get("snapshot_kind"),
    },
    # The API's default purpose; a user may not name one (admin_only_field).
    "createNetwork": {
        "purpose": lambda v: None if v.get("purpose") == "isolated" else v.get("purpose")
    },
    "createNic": {"ip_address_id": lambda v: v.get("ip_id")},
    "createNetworkRule": {"public_ip_address_id": lambda v: v.get("public_ip_id")},
}


class Offered(msgspec.Struct, frozen=True):
    """A route offered over Kafka and the command field that holds the
    resource it acts on (action routes: the `{id}` of the path)."""

    route: CommandRoute[Any]
    target_field: str | None


Key = tuple[str, str | None]  # (command type, kind)


def _placeholder(t: mi.Type) -> Any:
    if isinstance(t, mi.Metadata):
        return _placeholder(t.type)
    if isinstance(t, mi.UnionType):
        return _placeholder(next(x for x in t.types if not isinstance(x, mi.NoneType)))
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.StructType):
        return t.cls(**{f.name: _placeholder(f.type) for f in t.fields})
    simple: dict[type[mi.Type], Any] = {
        mi.StrType: "x",
        mi.IntType: 1,
        mi.FloatType: 1.0,
        mi.BoolType: True,
    }
    if isinstance(t, mi.UUIDType):
        return uuid.uuid4()
    for kind, value in simple.items():
        if isinstance(t, kind):
            return value
    return ()  # tuples and lists


def _key(command: Command) -> Key:
    kind = getattr(command, "kind", None)
    # Only the operation commands say which operation by `kind`; a network
    # rule's kind is one of its fields.
    operation = type(command).__name__.endswith("Operation")
    return type(command).__name__, kind if operation and isinstance(kind, str) else None


def _probe(route: CommandRoute[Any]) -> tuple[Key, Offered]:
    admin = Principal(token_id=uuid.uuid4(), role="admin", account="probe")
    body = _placeholder(mi.type_info(route.body))
    target = uuid.uuid4()
    command = route.build(Call(body, admin, target if route.target else None))
    target_field = None
    if route.target is not None:
        found = [n for n in command.__struct_fields__ if getattr(command, n) == target]
        if len(found) != 1:
            raise RuntimeError(f"route {route.name}: cannot tell which field is its {{id}}")
        target_field = found[0]
    return _key(command), Offered(route, target_field)


def _offered() -> dict[Key, Offered]:
    found: dict[Key, Offered] = {}
    for route in COMMAND_ROUTES:
        key, offered = _probe(route)
        if key in found:
            raise RuntimeError(f"routes {found[key].route.name} and {route.name} build {key}")
        found[key] = offered
    return found


OFFERED = _offered()
COMMAND_TYPES = sorted({name for name, _ in OFFERED})
_BY_NAME: dict[str, type[Command]] = {cls.__name__: cls for cls in HANDLERS if cls.published}


@functools.cache
def _decoder(cls: type[Command]) -> msgspec.json.Decoder[Command]:
    return msgspec.json.Decoder(cls)


def decode(ce_type: str, value: bytes) -> tuple[Command, Offered]:
    """The command of a record, and the route that offers it; ApiError
    (400/422) when the type is not offered or the value does not fit."""
    cls = _BY_NAME.get(ce_type)
    if cls is None or ce_type not in COMMAND_TYPES:
        raise ApiError(
            400,
            "unknown-command",
            f"ce_type {ce_type!r} is not a command clients may send; the types are"
            " listed in docs/events.md (Commands over Kafka)",
            field="ce_type",
        )
    try:
        command = _decoder(cls).decode(value or b"")
    except msgspec.DecodeError as error:
        raise invalid_body(error) from None
    offered = OFFERED.get(_key(command))
    if offered is None:
        kind = getattr(command, "kind", None)
        raise ApiError(
            422, "unknown-command", f"{ce_type} of kind {kind!r} is not offered", field="kind"
        )
    return command, offered


def to_call(command: Command, offered: Offered, principal: Principal) -> Call[Any]:
    """The call the route would have made of an HTTP request that builds
    exactly `command`; ApiError when no request could (403 as for HTTP:
    another account, an admin-only field; 422 for a field the API never sets)."""
    route = offered.route
    values: Values = msgspec.to_builtins(command)
    resource_id: UUID | None = None
    if offered.target_field is not None:
        resource_id = getattr(command, offered.target_field)
    renamed = BODY_FIELDS.get(route.name, {})
    # __struct_fields__, not msgspec.structs.fields(): that one evaluates
    # the annotations on every call (~4 ms a command, measured).
    body_values = {
        name: renamed[name](values) if name in renamed else values.get(name)
        for name in route.body.__struct_fields__
        if name in renamed or name in values
    }
    body_values = {k: v for k, v in body_values.items() if v is not None}
    try:
        body = msgspec.convert(body_values, route.body)
    except msgspec.ValidationError as error:
        raise invalid_body(error) from None
    call: Call[Any] = Call(body, principal, resource_id)
    rebuilt = route.build(call)
    if rebuilt != command:
        differ = [
            n for n in command.__struct_fields__ if getattr(rebuilt, n) != getattr(command, n)
        ]
        raise ApiError(
            422,
            "field-not-offered",
            f"{type(command).__name__}: {', '.join(differ)} cannot be set by a client"
            " (the HTTP API never sets it so)",
            field=differ[0] if differ else None,
        )
    return call
