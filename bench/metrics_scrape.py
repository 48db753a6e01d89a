"""What a /metrics scrape costs PostgreSQL with many operations in the read model.

An embedded PostgreSQL, the read model's tables as `readmodel.prepare` makes
them, and --operations rows in rm_operation: --in-flight of them pending or running,
the rest finished (succeeded, failed, compensated), as a long-lived cloud
has them; vacuumed and analyzed. Timed, each --repeat times, in this process:

- baseline: the count a scrape used to make, every status over the whole
  table (what api.metrics still runs when the finished counts are due);
- per scrape: the count every scrape makes now, the unfinished statuses
  from the state index (api.metrics.UNFINISHED).

    python bench/metrics_scrape.py [--operations 1000000] [--in-flight 500] [--repeat 5]

Last line: scrape_ms=<median> full_count_ms=<median> ratio=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from api.metrics import UNFINISHED
from bus.relay_log import connect
from engine.database import DatabaseTarget, EmbeddedPostgres
from engine.settings import load_settings
from projections import readmodel

FINISHED_MIX = ["succeeded", "succeeded", "succeeded", "failed", "compensated"]
IN_FLIGHT_MIX = ["running", "pending"]


async def timed(conn: asyncpg.Connection, sql: str, *args: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await conn.fetch(sql, *args)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def run(
    target: DatabaseTarget, operations: int, in_flight: int, repeat: int
) -> tuple[float, float]:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        table = f'"{target.schema}".{readmodel.table_name("operation")}'
        started = time.perf_counter()
        insert = (
            f"INSERT INTO {table} (id, version, position, state, name, account, zone_id,"
            " created_on, modified_on, data)"
            " SELECT gen_random_uuid(), 5, g, ($1::text[])[1 + g % cardinality($1::text[])],"
            " 'deploy', 'tenant', NULL, now() - g * interval '1 second', now(),"
            ' \'{"kind": "vm.deploy"}\'::jsonb FROM generate_series($2::int, $3::int) g'
        )
        await conn.execute(insert, FINISHED_MIX, 1, operations - in_flight)
        await conn.execute(insert, IN_FLIGHT_MIX, operations - in_flight + 1, operations)
        await conn.execute(f"VACUUM ANALYZE {table}")
        print(f"{operations:,} operations stored in {time.perf_counter() - started:.1f} s")
        full = await timed(
            conn, f"SELECT state, count(*) FROM {table} GROUP BY state", repeat=repeat
        )
        scrape = await timed(
            conn,
            f"SELECT state, count(*) FROM {table} WHERE state = ANY($1::text[]) GROUP BY state",
            UNFINISHED,
            repeat=repeat,
        )
    finally:
        await conn.close()
    return scrape, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=500, help="pending or running")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            scrape, full = asyncio.run(run(pg.target, args.operations, args.in_flight, args.repeat))
        finally:
            pg.stop()
    print(f"baseline, every status over the whole table: median {full:.1f} ms")
    print(
        f"per scrape, the {args.in_flight:,} unfinished by the state index: median {scrape:.1f} ms"
    )
    print(f"scrape_ms={scrape:.1f} full_count_ms={full:.1f} ratio={scrape / full:.3f}")


if __name__ == "__main__":
    main()
