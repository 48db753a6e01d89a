"""The one handler behind every command route.

In order: who is calling (401), may they call this (403), is the
Idempotency-Key well formed (400), is the body valid (400/413/415/422), do
the resources it names exist and belong to the caller (404), then the
engine command is submitted and its result answered with 202.

Idempotency is the engine's: the key travels in the CommandContext and the
engine stores it with the command's hash and first result in the same
transaction as its events. The body becomes the same command every time
(no ids are invented here), so the same key and body replay the first
answer and the same key with another body is refused (422).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from cloud_engine.api.auth import Principal, require_access
from cloud_engine.api.codec import json_response, read_json
from cloud_engine.api.context import (
    ApiContext,
    context_of,
    idempotency_key,
    principal_of,
    request_id_of,
)
from cloud_engine.api.problems import UNAVAILABLE, from_domain, not_found, unavailable
from cloud_engine.api.resources import BY_TYPE
from cloud_engine.api.routing import Call, CommandRoute, Ref
from cloud_engine.api.views import CommandAccepted
from cloud_engine.engine.commands import Command, CommandContext, CommandResult
from cloud_engine.engine.errors import DomainError

log = structlog.get_logger("api.commands")

_PENDING_LOCK = threading.Lock()


def endpoint(route: CommandRoute[Any]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        principal = await principal_of(request)
        require_access(principal, route.access, write=True)
        key = idempotency_key(request.headers)
        body = await read_json(request, route.body)
        call: Call[Any] = Call(body, principal, request.path_params.get("id"))
        accepted = await run_call(context_of(request), route, call, key, request_id_of(request))
        return json_response(accepted, 202, headers={"Location": location(route, accepted)})

    handle.__name__ = route.name
    return handle


async def run_call(
    ctx: ApiContext,
    route: CommandRoute[Any],
    call: Call[Any],
    key: str | None,
    request_id: str,
    *,
    target_field: str = "id",
) -> CommandAccepted:
    """A call that passed authentication, access and body validation, on to
    the engine: the resources it names (404), defaults looked up, the
    command built and executed. Every transport runs this (HTTP above, the
    Kafka gateway in api/kafka_gateway.py), so the checks are the same.
    target_field: how the transport names the resource acted on in a problem."""
    principal = call.principal
    resource_id = call.resource_id
    if route.target is not None:
        await check_ref(ctx, principal, Ref(route.target, call.id, target_field))
    for ref in route.refs(call):
        await check_ref(ctx, principal, ref)
    digest = None
    if route.resolve is not None:
        # The defaults it fills in come from the read model and may be
        # different on a retry: the key stands for the request as sent.
        digest = request_digest(route, resource_id, call.body) if key is not None else None
        call = Call(await route.resolve(call, ctx), principal, resource_id)
    command = route.build(call)
    context = CommandContext(
        actor=principal.actor,
        request_id=request_id,
        idempotency_key=key,
        request_digest=digest,
    )
    result = await execute(ctx, command, context)
    return answer(route, result)


def request_digest(route: CommandRoute[Any], resource_id: UUID | None, body: object) -> bytes:
    digest = hashlib.sha256(f"{route.name} {resource_id}".encode())
    digest.update(msgspec.json.encode(body))
    return digest.digest()


async def check_ref(ctx: ApiContext, principal: Principal, ref: Ref) -> None:
    """404 unless the resource exists, has the expected type and, for a
    user, belongs to their account: another account's resource is
    indistinguishable from a missing one."""
    try:
        owner = await ctx.owners.of(ref.id)
    except OSError:
        raise unavailable("the event store is unreachable") from None
    title = BY_TYPE[ref.type].title if ref.type in BY_TYPE else "resource"
    missing = not_found(f"{title} {ref.id} not found", field=ref.field)
    if owner is None or (ref.type is not None and owner.type != ref.type):
        raise missing
    if principal.is_admin or (owner.purpose is not None and owner.purpose in ref.purposes):
        return
    described = BY_TYPE.get(owner.type)
    if described is not None and not described.owned and ref.type is not None:
        return  # a fabric or catalog resource the route asks for by type: shared
    # An untyped ref stands for a tenant resource: a user may not point one at
    # a host (nor learn that the host exists).
    if described is None or not described.owned or owner.account != principal.account:
        raise missing


async def execute(ctx: ApiContext, command: Command, context: CommandContext) -> CommandResult:
    if ctx.pending >= ctx.max_pending:
        raise unavailable(
            f"{ctx.pending} commands are waiting for the engine's writer; retry shortly"
        )
    try:
        submitted = ctx.service.submit(command, context)
    except RuntimeError as error:  # the service is closing
        raise unavailable(str(error)) from None
    with _PENDING_LOCK:
        ctx.pending += 1
    submitted.add_done_callback(lambda _: _answered(ctx))
    # Shielded: cancelling the wait (timeout, client gone) must not cancel the
    # engine's future, which the writer thread resolves after committing.
    try:
        future = asyncio.wrap_future(submitted)
        return await asyncio.wait_for(asyncio.shield(future), ctx.command_timeout)
    except DomainError as error:
        raise from_domain(error) from None
    except TimeoutError:
        log.warning("command not answered in time", command=type(command).__name__)
        raise unavailable(
            "the command was not answered in time; it may still be recorded: "
            "retry with the same Idempotency-Key"
        ) from None
    except UNAVAILABLE as error:
        log.error("event store unreachable", error=str(error))
        raise unavailable("the event store is unreachable") from None
    # Anything else is a bug: a 500 with the traceback in the log, not a
    # 503 that tells the client to retry (nor the error's text).


def _answered(ctx: ApiContext) -> None:
    # On the writer thread, while the event loop may be counting up.
    with _PENDING_LOCK:
        ctx.pending -= 1


def answer(route: CommandRoute[Any], result: CommandResult) -> CommandAccepted:
    if route.operation:
        return CommandAccepted(
            operation_id=result.aggregate_id,
            resource_id=UUID(str(result.value)),
            resource_type=route.resource,
            position=result.position,
            replayed=result.replayed,
        )
    return CommandAccepted(
        operation_id=None,
        resource_id=result.aggregate_id,
        resource_type=route.resource,
        value=result.value,
        position=result.position,
        replayed=result.replayed,
    )


def location(route: CommandRoute[Any], accepted: CommandAccepted) -> str:
    if accepted.operation_id is not None:
        return f"/v1/operations/{accepted.operation_id}"
    return f"/v1/{BY_TYPE[route.resource].collection}/{accepted.resource_id}"
