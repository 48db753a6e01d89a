"""Prometheus metrics of the API process.

Request counts and latencies are counted as requests finish, labelled by
route template (/v1/vms/{id}), never by raw path, so the number of series
stays bounded. The engine's gauges (operations by status, how far the
relay and the projections are behind the log) are read from PostgreSQL
when /metrics is scraped, current on every scrape, by indexed queries; the
exception is the count of finished operations, which walks the whole read
model and is redone only when due (see FINISHED_RECOUNT_S). Each app has
its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_engine.engine.operations.operation import FINISHED, OPERATION_STATUSES
from cloud_engine.engine.service import WriterBatch
from cloud_engine.infra.tables import events_table, positions_table, table_name

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Unfinished operations are few (the work in flight) and counted on every
# scrape from the state index. Finished ones pile up for good: counting them
# walks the whole read model (~170 ms, planned as a parallel scan, at
# 1,000,000 operations), so they are recounted at most this often, or
# FINISHED_COST_FACTOR times as long as the last count took, whichever is
# longer: the count takes at most ~1 % of the wall time (a few % of a core
# when PostgreSQL scans in parallel), however large the table.
FINISHED_RECOUNT_S = 60.0
FINISHED_COST_FACTOR = 100
# A failed count is retried this soon, not a whole period later.
FINISHED_RETRY_S = 5.0
UNFINISHED = sorted(set(OPERATION_STATUSES) - FINISHED)


def operations_by_state_sql(schema: str) -> str:
    """(name, n) per state among the states in $1, from the state index."""
    return (
        f'SELECT state AS name, count(*) AS n FROM "{schema}".{table_name("operation")}'
        " WHERE state = ANY($1::text[]) GROUP BY state"
    )


class ApiMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # None until a count succeeded: no finished series rather than false zeros.
        self._finished: dict[str, int] | None = None
        self._finished_due = 0.0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cloudengine_api_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cloudengine_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.operations = Gauge(
            "cloudengine_operations",
            "Operations in the read model, by status (finished ones recounted"
            " at most every minute, absent until first counted)",
            ["status"],
            registry=self.registry,
        )
        self.log_position = Gauge(
            "cloudengine_event_log_position",
            "Global position of the newest event in the log",
            registry=self.registry,
        )
        self.projection_lag = Gauge(
            "cloudengine_projection_lag_events",
            "Events in the log that a projection has not reflected yet",
            ["projection"],
            registry=self.registry,
        )
        self.relay_lag = Gauge(
            "cloudengine_relay_lag_events",
            "Events in the log that the relay has not published yet",
            ["relay"],
            registry=self.registry,
        )

        # The command writer of this process (engine/service.py): an accept
        # is its wait for a batch plus the batch (group commit).
        self.writer_wait = Histogram(
            "cloudengine_writer_wait_seconds",
            "Time a command waited for the command writer to take it into a batch",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.writer_batch = Histogram(
            "cloudengine_writer_batch_seconds",
            "Time the command writer took for a batch, from its start to its last answer",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.writer_batch_commands = Histogram(
            "cloudengine_writer_batch_commands",
            "Commands per batch of the command writer",
            buckets=BATCH_SIZES,
            registry=self.registry,
        )
        self.writer_conflicts = Counter(
            "cloudengine_writer_conflicts",
            "Batches run again because another process changed what they read",
            registry=self.registry,
        )

    def writer(self, batch: WriterBatch) -> None:
        """One batch of the command writer (called on its thread)."""
        self.writer_batch.observe(batch.seconds)
        self.writer_batch_commands.observe(batch.commands)
        for wait in batch.waits:
            self.writer_wait.observe(wait)
        if batch.conflicts:
            self.writer_conflicts.inc(batch.conflicts)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(method, route, code).inc()
        self.latency.labels(method, route, code).observe(seconds)

    async def refresh(self, pool: asyncpg.Pool, schema: str) -> None:
        latest = int(
            await pool.fetchval(
                f"SELECT coalesce(max(notification_id), 0) FROM {events_table(schema)}"
            )
        )
        self.log_position.set(latest)
        by_state = operations_by_state_sql(schema)
        now = self._clock()
        if now >= self._finished_due:
            # Claimed before the await: a scrape meanwhile keeps the last counts.
            self._finished_due = now + FINISHED_RECOUNT_S
            try:
                finished = await _rows(pool, by_state, sorted(FINISHED))
            except BaseException:
                self._finished_due = now + FINISHED_RETRY_S
                raise
            self._finished = dict.fromkeys(sorted(FINISHED), 0) | dict(finished)
            took = self._clock() - now
            self._finished_due = now + max(FINISHED_RECOUNT_S, FINISHED_COST_FACTOR * took)
        counts: dict[str, int] = dict.fromkeys(UNFINISHED, 0)
        counts.update(self._finished or {})
        counts.update(await _rows(pool, by_state, UNFINISHED))
        self.operations.clear()
        for name, n in counts.items():
            self.operations.labels(name).set(n)
        self.projection_lag.clear()
        for name, position in await _rows(
            pool, f"SELECT projection AS name, position AS n FROM {positions_table(schema)}"
        ):
            self.projection_lag.labels(name).set(max(0, latest - position))
        self.relay_lag.clear()
        for name, position in await _rows(
            pool, f'SELECT name, position AS n FROM "{schema}".cloudengine_relay'
        ):
            self.relay_lag.labels(name).set(max(0, latest - position))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def _rows(pool: asyncpg.Pool, sql: str, *args: object) -> list[tuple[str, int]]:
    """(name, n) rows; none while the component that makes the table never ran."""
    try:
        rows = await pool.fetch(sql, *args)
    except asyncpg.UndefinedTableError:
        return []
    return [(str(r["name"]), int(r["n"])) for r in rows]
