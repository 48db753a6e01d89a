"""asyncpg connections and pools on a DatabaseTarget: how every async
component (relay, projections, API, engine's manager, effectors) reaches
PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg

from cloud_engine.infra.database import DatabaseTarget, keep_session


def _arguments(target: DatabaseTarget) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "password": target.password or None,
        "database": target.dbname,
    }


async def connect(target: DatabaseTarget) -> asyncpg.Connection:
    return await asyncpg.connect(**_arguments(target))


async def create_pool(
    target: DatabaseTarget, *, max_size: int, min_size: int = 1, single_reads: bool = False
) -> asyncpg.Pool:
    """single_reads: the pool only runs single reads and transactions
    (transaction-scoped locks only), so the reset round trip on every
    release is skipped (infra.database.keep_session)."""
    return await asyncpg.create_pool(
        **_arguments(target),
        min_size=min_size,
        max_size=max_size,
        reset=keep_session if single_reads else None,  # None: asyncpg's own reset
    )
