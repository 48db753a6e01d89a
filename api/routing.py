"""The shape of a command route: one entry per endpoint in the route table.

An entry says what the endpoint accepts (a contract Struct), who may call
it, which resources it names (checked against the caller's account before
anything runs) and how its body becomes an engine command. Adding an
endpoint for a new engine command is one entry; the generic handler
(api/commands.py) and the OpenAPI document (api/openapi.py) follow from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

import msgspec

from cloud_engine.api.auth import Access, Principal, account_for
from cloud_engine.api.resources import BY_TYPE
from cloud_engine.engine.commands import Command

if TYPE_CHECKING:
    from cloud_engine.api.context import ApiContext

B = TypeVar("B", bound=msgspec.Struct)


class Ref(msgspec.Struct, frozen=True):
    """A resource a command names: it must exist, be of `type` (None: any
    tenant type) and, for users, belong to their account."""

    type: str | None
    id: UUID
    field: str  # where the request named it: "network_ids[1]", "id" for the path
    # Networks of these purposes may be named by any account (a public one
    # to take a public IP from, a shared one to put a VM on).
    purposes: tuple[str, ...] = ()


class Call(Generic[B]):
    """One request on its way to becoming a command."""

    __slots__ = ("body", "principal", "resource_id")

    def __init__(self, body: B, principal: Principal, resource_id: UUID | None) -> None:
        self.body = body
        self.principal = principal
        self.resource_id = resource_id

    @property
    def id(self) -> UUID:
        """The resource in the path (action routes only)."""
        assert self.resource_id is not None, "route has no {id} in its path"
        return self.resource_id

    @property
    def account(self) -> str:
        """The account a new resource is for (403 when a user names another)."""
        requested = getattr(self.body, "account", None)
        return account_for(self.principal, requested if isinstance(requested, str) else None)


def _no_refs(_call: Call[Any]) -> Iterable[Ref]:
    return ()


def named(*pairs: tuple[str, str]) -> Callable[[Call[Any]], list[Ref]]:
    """Refs from body fields: named(("zone", "zone_id")) checks body.zone_id
    (when set) is a zone, so a missing one is a 404 naming zone_id."""

    def refs(call: Call[Any]) -> list[Ref]:
        found = ((kind, name, getattr(call.body, name)) for kind, name in pairs)
        return [Ref(kind, value, name) for kind, name, value in found if isinstance(value, UUID)]

    return refs


@dataclass(frozen=True)
class CommandRoute(Generic[B]):
    name: str  # operationId in the OpenAPI document: "deployVm"
    path: str
    summary: str
    resource: str  # public type of the resource the command creates or acts on
    body: type[B]
    build: Callable[[Call[B]], Command]
    access: Access = "tenant"
    # The command starts an Operation: the engine's result names the operation,
    # its value the resource.
    operation: bool = False
    # The type of the {id} in the path, checked like a Ref (action routes).
    target: str | None = None
    refs: Callable[[Call[B]], Iterable[Ref]] = _no_refs
    # Fills in defaults that need a lookup (run after the refs are checked).
    resolve: Callable[[Call[B], ApiContext], Awaitable[B]] | None = None
    method: str = "POST"


def create(
    resource: str,
    name: str,
    summary: str,
    body: type[B],
    build: Callable[[Call[B]], Command],
    *,
    access: Access = "tenant",
    operation: bool = False,
    refs: Callable[[Call[B]], Iterable[Ref]] = _no_refs,
    resolve: Callable[[Call[B], ApiContext], Awaitable[B]] | None = None,
) -> CommandRoute[B]:
    """POST /v1/<collection>: a new resource."""
    return CommandRoute(
        name=name,
        path=f"/v1/{BY_TYPE[resource].collection}",
        summary=summary,
        resource=resource,
        body=body,
        build=build,
        access=access,
        operation=operation,
        refs=refs,
        resolve=resolve,
    )


def action(
    resource: str,
    verb: str,
    name: str,
    summary: str,
    body: type[B],
    build: Callable[[Call[B]], Command],
    *,
    access: Access = "tenant",
    operation: bool = False,
    refs: Callable[[Call[B]], Iterable[Ref]] = _no_refs,
) -> CommandRoute[B]:
    """POST /v1/<collection>/{id}/<verb>: an action on an existing resource."""
    return CommandRoute(
        name=name,
        path=f"/v1/{BY_TYPE[resource].collection}/{{id}}/{verb}",
        summary=summary,
        resource=resource,
        body=body,
        build=build,
        access=access,
        operation=operation,
        target=resource,
        refs=refs,
    )
