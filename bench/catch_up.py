"""What a placement refusal's catch-up costs over 10,000 hosts.

Before "no host fits" is final, the placer asks which hosts and pools have
read-model rows older than the log (orchestration.candidate_source.CandidateSource.behind,
one index probe per row) and reads those from the log. This times that query
over an embedded PostgreSQL holding --hosts hosts and --pools pools, each
with --events events in the log, their rows caught up except --behind of
them. Vacuumed and analyzed first.

The baseline, in the same process: the read of every host and pool row that
the planner makes on each snapshot (CandidateSource._fetch), which every plan on
a cold or expired cache already pays.

Then what the placer does with those it found: read them from the log
(EventStore.load_many, every event of each, no snapshot). --log-hosts real
hosts are registered through the command service, each given --log-events
events (overcommit changes), and loaded all at once.

    python bench/catch_up.py [--hosts 10000] [--pools 2000] [--events 20]
                             [--behind 50] [--repeat 9]
                             [--log-hosts 100] [--log-events 100]

Last line: behind_ms=<median> rows_read_ms=<median> ratio=<x>
           log_read_ms=<median> per_event_us=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

# The repository root, for the engine's packages (this script's folder,
# bench/, is on the path already, for deploy_fabric).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_fabric import one_cluster

from cloud_engine.engine.commands.hosts import UpdateHostOvercommit
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.pg import connect, create_pool
from cloud_engine.infra.settings import load_settings
from cloud_engine.infra.tables import events_table, read_model
from cloud_engine.orchestration.candidate_source import CandidateSource
from cloud_engine.projections import readmodel


async def fill(target: DatabaseTarget, hosts: int, pools: int, events: int, behind: int) -> None:
    """Synthetic log and rows: the log's events are opaque bytes (behind()
    reads only ids and versions); a row's version is its aggregate's last
    event's, but for the first `behind` hosts, one event short."""
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        started = time.perf_counter()
        for name, count, offset in (("host", hosts, 0), ("storage_pool", pools, hosts)):
            table = read_model(target.schema, name)
            await conn.execute(
                f"INSERT INTO {events_table(target.schema)}"
                " (originator_id, originator_version, topic, state)"
                " SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(a), 12, '0'))::uuid, v,"
                " 'bench', '\\x00'::bytea"
                " FROM generate_series($1::int, $2::int) a, generate_series(1, $3::int) v",
                offset + 1,
                offset + count,
                events,
            )
            await conn.execute(
                f"INSERT INTO {table} (id, version, position, state, created_on, modified_on,"
                " data) SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(a), 12, '0'))::uuid,"
                " CASE WHEN a <= $3 THEN $4::int - 1 ELSE $4::int END, a, 'Enabled', now(),"
                " now(), '{}'::jsonb FROM generate_series($1::int, $2::int) a",
                offset + 1,
                offset + count,
                behind if name == "host" else 0,
                events,
            )
            await conn.execute(f"VACUUM ANALYZE {table}")
        await conn.execute(f"VACUUM ANALYZE {events_table(target.schema)}")
        print(
            f"{hosts:,} hosts and {pools:,} pools, {events} events each, stored in"
            f" {time.perf_counter() - started:.1f} s"
        )
    finally:
        await conn.close()


async def run(target: DatabaseTarget, args: argparse.Namespace) -> tuple[float, float]:
    await fill(target, args.hosts, args.pools, args.events, args.behind)
    pool = await create_pool(target, max_size=2)
    try:
        candidates = CandidateSource(pool, target.schema)
        found = await candidates.behind()
        assert len(found) == args.behind, f"behind() found {len(found)}, not {args.behind}"
        behind_ms: list[float] = []
        rows_ms: list[float] = []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            started = time.perf_counter()
            await candidates.behind()
            behind_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await candidates._fetch("host")
            await candidates._fetch("storage_pool")
            rows_ms.append((time.perf_counter() - started) * 1000)
    finally:
        await pool.close()
    return statistics.median(behind_ms), statistics.median(rows_ms)


def log_hosts(service: CommandService, hosts: int, events: int) -> list[UUID]:
    """Hosts in the log with `events` events each, through the service."""
    ids = list(one_cluster(service, "bench", ["test:///default"] * hosts).hosts)
    commands = [
        UpdateHostOvercommit(host_id=h, cpu_overcommit=1.0 + (n % 2), ram_overcommit=1.0)
        for n in range(events - 1)
        for h in ids
    ]
    for chunk in range(0, len(commands), 256):  # submitted together: batched
        futures = [service.submit(c) for c in commands[chunk : chunk + 256]]
        for f in futures:
            f.result()
    return ids


def time_log_reads(store: EventStore, ids: list[UUID], events: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        loaded = store.load_many(ids)
        times.append((time.perf_counter() - started) * 1000)
        assert len(loaded) == len(ids) and all(a.version == events for a in loaded.values())
    return statistics.median(times)


def time_log_phase(store: EventStore, args: argparse.Namespace) -> float:
    service = CommandService(store)
    try:
        started = time.perf_counter()
        ids = log_hosts(service, args.log_hosts, args.log_events)
        print(
            f"{args.log_hosts} hosts of {args.log_events} events in the log in"
            f" {time.perf_counter() - started:.1f} s"
        )
    finally:
        service.close()
    return time_log_reads(store, ids, args.log_events, args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=20, help="in the log per host and pool")
    parser.add_argument("--behind", type=int, default=50, help="hosts whose rows lag the log")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--log-hosts", type=int, default=100, help="real hosts read from the log")
    parser.add_argument("--log-events", type=int, default=100, help="events of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            store = EventStore(pg.target)  # and the log's tables
            try:
                behind, rows = asyncio.run(run(pg.target, args))
                log_ms = time_log_phase(store, args)
            finally:
                store.close()
        finally:
            pg.stop()
    print(f"baseline, every host and pool row (each snapshot): median {rows:.1f} ms")
    print(f"behind(), the rows older than the log ({args.behind} found): median {behind:.1f} ms")
    total = args.log_hosts * args.log_events
    per_event_us = log_ms * 1000 / total
    print(
        f"from the log, {args.log_hosts} hosts of {args.log_events} events ({total:,}):"
        f" median {log_ms:.1f} ms, {per_event_us:.1f} us per event"
    )
    print(
        f"behind_ms={behind:.1f} rows_read_ms={rows:.1f} ratio={behind / rows:.2f}"
        f" log_read_ms={log_ms:.1f} per_event_us={per_event_us:.1f}"
    )


if __name__ == "__main__":
    main()
