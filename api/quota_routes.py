"""Quotas over HTTP: an account's limits with its current usage (GET, the
account itself or an administrator), and the limits set by administrators
(POST, an engine command: atomic with the usage it is checked against,
see engine/virtual/account.py).

Read from the log (the account's aggregate), not a read model: the usage a
refused deploy was checked against is the usage shown.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cloud_engine.api.auth import ACCOUNT_PATTERN, account_for, require_access
from cloud_engine.api.codec import json_response, read_json
from cloud_engine.api.commands import execute
from cloud_engine.api.context import context_of, idempotency_key, principal_of, request_id_of
from cloud_engine.api.reads import parse_query
from cloud_engine.api.views import CommandAccepted
from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.accounts import SetAccountLimits
from cloud_engine.engine.virtual.account import LIMITS, Account, account_id

Account_ = Annotated[str, msgspec.Meta(pattern=ACCOUNT_PATTERN)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]


class QuotaQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: Account_ | None = None


class QuotaSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of an account: a number sets one, null lifts it, one left out
    stays as it was."""

    account: Account_
    vms: Limit | msgspec.UnsetType | None = msgspec.UNSET
    vcpus: Limit | msgspec.UnsetType | None = msgspec.UNSET
    ram_mb: Limit | msgspec.UnsetType | None = msgspec.UNSET
    volume_gb: Limit | msgspec.UnsetType | None = msgspec.UNSET
    public_ips: Limit | msgspec.UnsetType | None = msgspec.UNSET


class Quota(msgspec.Struct, frozen=True, kw_only=True):
    """One limit: max (null: none set) and what the account uses now."""

    limit: str
    max: int | None
    used: int


class QuotaPage(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    items: list[Quota]


async def get_quotas(request: Request) -> Response:
    principal = await principal_of(request)
    query = parse_query(request, QuotaQuery)
    account = account_for(principal, query.account)
    ctx = context_of(request)
    loaded = await asyncio.to_thread(ctx.store.load, account_id(account))
    limits: dict[str, int] = {}
    used: dict[str, int] = {}
    if isinstance(loaded, Account):
        limits, used = loaded.limits, loaded.used
    items = [Quota(limit=n, max=limits.get(n), used=used.get(n, 0)) for n in LIMITS]
    return json_response(QuotaPage(account=account, items=items))


async def set_quotas(request: Request) -> Response:
    principal = await principal_of(request)
    require_access(principal, "fabric", write=True)
    key = idempotency_key(request.headers)
    body = await read_json(request, QuotaSet)
    command = SetAccountLimits(
        account=body.account, vms=body.vms, vcpus=body.vcpus, ram_mb=body.ram_mb,
        volume_gb=body.volume_gb, public_ips=body.public_ips,
    )  # fmt: skip
    context = CommandContext(
        actor=principal.actor, request_id=request_id_of(request), idempotency_key=key
    )
    result = await execute(context_of(request), command, context)
    accepted = CommandAccepted(
        operation_id=None,
        resource_id=result.aggregate_id,
        resource_type="account",
        position=result.position,
        replayed=result.replayed,
    )
    return json_response(accepted, 202, headers={"Location": f"/v1/quotas?account={body.account}"})


ROUTES = [("/v1/quotas", "GET", get_quotas), ("/v1/quotas", "POST", set_quotas)]
BODIES: list[type[msgspec.Struct]] = [QuotaSet, QuotaPage]
