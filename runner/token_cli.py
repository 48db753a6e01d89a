"""`cloud-engine token create --role admin|user --account NAME`: a bearer
token for the HTTP API. The token is printed once, alone on stdout (so a
script can capture it); only its SHA-256 is stored."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from typing import Any, get_args

from cloud_engine.api import tokens
from cloud_engine.api.auth import Principal, Role, valid_account
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import Settings
from cloud_engine.runner.components import start_infrastructure

COMMANDS = ("token",)


def register(sub: Any) -> None:
    token = sub.add_parser("token", help="bearer tokens of the HTTP API")
    actions = token.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser("create", help="create a token and print it (shown only once)")
    create.add_argument("--role", choices=get_args(Role), required=True)
    create.add_argument("--account", required=True, help="the account the token acts for")
    create.add_argument("--expires-in-s", type=int, help="seconds until it stops working")
    create.add_argument("--description", default="", help="what the token is for")
    create.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not valid_account(args.account):
        print(
            f"cloud-engine: invalid: --account {args.account!r}: letters, digits, '.', '_'"
            " and '-', at most 64, starting with a letter or digit",
            file=sys.stderr,
        )
        return 2
    if args.expires_in_s is not None and args.expires_in_s < 1:
        print("cloud-engine: invalid: --expires-in-s must be at least 1", file=sys.stderr)
        return 2
    infra = start_infrastructure(settings, broker=False)
    try:
        secret, principal = asyncio.run(
            _create(infra.target, args.role, args.account, args.expires_in_s, args.description)
        )
    finally:
        infra.stop()
    print(
        f"created {principal.role} token {principal.token_id} for account {principal.account}",
        file=sys.stderr,
    )
    print(secret, flush=True)
    return 0


async def _create(
    target: DatabaseTarget, role: Role, account: str, expires_in_s: int | None, description: str
) -> tuple[str, Principal]:
    expires = None if expires_in_s is None else timedelta(seconds=expires_in_s)
    conn = await connect(target)
    try:
        return await tokens.create(
            conn, target.schema, role, account, expires_in=expires, description=description
        )
    finally:
        await conn.close()
