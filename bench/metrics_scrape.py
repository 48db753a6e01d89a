"""What a /metrics scrape costs PostgreSQL with many operations in the read model.

An embedded PostgreSQL, the read model's tables as `readmodel.prepare` makes
them, and --operations rows in rm_operation: --in-flight of them pending or running,
the rest finished (succeeded, failed, compensated), as a long-lived cloud
has them; vacuumed and analyzed. Timed, each --repeat times, in this process:

- baseline: the operations count every scrape used to make, every status
  over the whole table;
- per scrape: the operations count every scrape makes now, the unfinished
  statuses from the state index (api.metrics.UNFINISHED);
- when due: the count of the finished statuses, which api.metrics makes
  at most every FINISHED_RECOUNT_S (or FINISHED_COST_FACTOR times as long
  as it took).

(A scrape also reads the log's last position and the relay's and the
projections' positions: a few rows by key, not timed here.)

    python bench/metrics_scrape.py [--operations 1000000] [--in-flight 500] [--repeat 5]

Last line: scrape_ms=<median> full_count_ms=<median> ratio=<x> finished_count_ms=<median>
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

from cloud_engine.api.metrics import UNFINISHED, operations_by_state_sql
from cloud_engine.engine.operations.operation import FINISHED
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings
from cloud_engine.infra.tables import read_model
from cloud_engine.projections import readmodel

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
) -> tuple[float, float, float]:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        table = read_model(target.schema, "operation")
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
        by_state = operations_by_state_sql(target.schema)
        scrape = await timed(conn, by_state, UNFINISHED, repeat=repeat)
        finished = await timed(conn, by_state, sorted(FINISHED), repeat=repeat)
    finally:
        await conn.close()
    return scrape, full, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--operations", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=500, help="pending or running")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            scrape, full, finished = asyncio.run(
                run(pg.target, args.operations, args.in_flight, args.repeat)
            )
        finally:
            pg.stop()
    print(f"baseline, every status over the whole table: median {full:.1f} ms")
    print(
        f"per scrape, the {args.in_flight:,} unfinished by the state index: median {scrape:.1f} ms"
    )
    print(f"when due, the finished by the state index: median {finished:.1f} ms")
    print(
        f"scrape_ms={scrape:.1f} full_count_ms={full:.1f} ratio={scrape / full:.3f}"
        f" finished_count_ms={finished:.1f}"
    )


if __name__ == "__main__":
    main()
