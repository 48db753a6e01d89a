"""Prometheus metrics of the API process.

Request counts and latencies are counted as requests finish, labelled by
route template (/v1/vms/{id}), never by raw path, so the number of series
stays bounded. The engine's gauges (operations by status, how far the
relay and the projections are behind the log) are read from PostgreSQL
when /metrics is scraped: a few indexed queries, and always current.
Each app has its own registry, so several apps in one process (tests)
never collide.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bus.relay_log import events_table
from projections.readmodel import POSITIONS, table_name

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
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
            "Operations in the read model, by status",
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
        operations = await _rows(
            pool,
            f'SELECT state AS name, count(*) AS n FROM "{schema}".{table_name("operation")}'
            " GROUP BY state",
        )
        self.operations.clear()
        for name, n in operations:
            self.operations.labels(name).set(n)
        self.projection_lag.clear()
        for name, position in await _rows(
            pool, f'SELECT projection AS name, position AS n FROM "{schema}".{POSITIONS}'
        ):
            self.projection_lag.labels(name).set(max(0, latest - position))
        self.relay_lag.clear()
        for name, position in await _rows(
            pool, f'SELECT name, position AS n FROM "{schema}".cloudengine_relay'
        ):
            self.relay_lag.labels(name).set(max(0, latest - position))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def _rows(pool: asyncpg.Pool, sql: str) -> list[tuple[str, int]]:
    """(name, n) rows; none while the component that makes the table never ran."""
    try:
        rows = await pool.fetch(sql)
    except asyncpg.UndefinedTableError:
        return []
    return [(str(r["name"]), int(r["n"])) for r in rows]
