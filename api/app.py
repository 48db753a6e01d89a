"""The app factory: routes from the route table, problem documents for
every error, and the connections the endpoints share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from cloud_engine.api import health, quota_routes, token_routes, tokens, ui
from cloud_engine.api.codec import problem_response
from cloud_engine.api.commands import endpoint
from cloud_engine.api.console import console_endpoint
from cloud_engine.api.context import ApiContext
from cloud_engine.api.live import LiveConfig, LiveFeed, stream_endpoint
from cloud_engine.api.metrics import ApiMetrics
from cloud_engine.api.middleware import RequestMiddleware
from cloud_engine.api.owners import Owners
from cloud_engine.api.problems import UNAVAILABLE, ApiError, unavailable
from cloud_engine.api.reads import events_endpoint, get_endpoint, list_endpoint, state_endpoint
from cloud_engine.api.resources import TYPES
from cloud_engine.api.route_table import COMMAND_ROUTES
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.projections import readmodel

Handler = Callable[[Request], Awaitable[Response]]

log = structlog.get_logger("api.app")


def http_routes() -> list[Route]:
    by_path: dict[str, dict[str, Handler]] = {}

    def add(path: str, method: str, handler: Handler) -> None:
        by_path.setdefault(path.replace("{id}", "{id:uuid}"), {})[method] = handler

    for resource in TYPES:
        base = f"/v1/{resource.collection}"
        add(base, "GET", list_endpoint(resource))
        add(f"{base}/{{id}}", "GET", get_endpoint(resource))
        add(f"{base}/{{id}}/events", "GET", events_endpoint(resource))
        add(f"{base}/{{id}}/state", "GET", state_endpoint(resource))
    for route in COMMAND_ROUTES:
        add(route.path, route.method, endpoint(route))
    for path, method, handler in [*token_routes.ROUTES, *quota_routes.ROUTES]:
        add(path, method, handler)
    add("/livez", "GET", health.livez)
    add("/readyz", "GET", health.readyz)
    add("/metrics", "GET", health.metrics)
    add("/openapi.json", "GET", health.openapi)
    add("/v1/stream", "GET", stream_endpoint)
    # One Route per path, so a wrong method answers 405 with every allowed one.
    return [
        Route(path, _by_method(methods), methods=list(methods)) for path, methods in by_path.items()
    ]


def _by_method(handlers: dict[str, Handler]) -> Handler:
    if len(handlers) == 1:
        return next(iter(handlers.values()))

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(exc.problem(request.url.path, _request_id(request)), exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "no-such-endpoint", f"no endpoint at {request.url.path}")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error = ApiError(
            405,
            "method-not-allowed",
            f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}",
            headers=dict(exc.headers or {}),
        )
    else:
        error = ApiError(
            exc.status_code, "http-error", str(exc.detail), headers=dict(exc.headers or {})
        )
    return await _api_error(request, error)


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable", error=repr(exc))
    return await _api_error(request, unavailable("the database is unreachable; retry shortly"))


async def _internal(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log under the request id, never to the client.
    # Starlette runs this handler outside RequestMiddleware (whose log context
    # is gone by now and whose send adds X-Request-Id), so both are set here.
    request_id = _request_id(request)
    log.error("unhandled error", request_id=request_id, error=repr(exc), exc_info=exc)
    error = ApiError(
        500, "internal", "the request failed on the server; its request_id is in the server log"
    )
    headers = {} if request_id is None else {"X-Request-Id": request_id}
    return problem_response(error.problem(request.url.path, request_id), headers)


def create_app(
    service: CommandService,
    store: EventStore,
    target: DatabaseTarget,
    *,
    pool_size: int = 8,
    command_timeout: float = 30.0,
    max_pending: int = 2000,
    metrics: ApiMetrics | None = None,
    live: LiveConfig | None = None,
) -> Starlette:
    """An app on an existing command service and event store (the caller
    owns and closes both); it opens its own asyncpg pool for reads and,
    given a broker (`live`), the consumer of the live event stream.
    metrics: kept across apps (`up` makes a new app when it restarts the
    API, and its counters go on)."""
    metrics = metrics if metrics is not None else ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed: LiveFeed | None = None
        # Single reads and DDL in transactions (transaction-scoped locks
        # only): no session state for a reset round trip to undo.
        pool = await create_pool(target, max_size=pool_size, single_reads=True)
        unobserve = service.observe(metrics.writer)
        try:
            await _prepare(pool, target.schema)
            owners = Owners(pool, target.schema)
            feed = None if live is None else LiveFeed(live, owners)
            app.state.api = ApiContext(
                service=service,
                store=store,
                schema=target.schema,
                pool=pool,
                tokens=tokens.TokenStore(pool, target.schema),
                owners=owners,
                metrics=metrics,
                command_timeout=command_timeout,
                max_pending=max_pending,
                live=feed,
            )
            if feed is not None:
                await feed.start()
            yield
        finally:
            unobserve()
            if feed is not None:
                await feed.close()
            await pool.close()

    routes: list[BaseRoute] = [
        *http_routes(),
        # The serial console: a WebSocket, beside the HTTP endpoints.
        WebSocketRoute("/v1/vms/{id:uuid}/console", console_endpoint),
        ui.mount(),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestMiddleware, metrics=metrics)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            **{kind: _unavailable for kind in UNAVAILABLE},
            Exception: _internal,
        },
        lifespan=lifespan,
    )


async def _prepare(pool: asyncpg.Pool, schema: str) -> None:
    """The tokens table, and the read-model tables so lists answer (empty)
    before the projection worker ever ran. Several processes may start at
    once; CREATE ... IF NOT EXISTS can still collide, so try again."""
    for attempt in range(3):
        try:
            async with pool.acquire() as conn:
                await tokens.prepare(conn, schema)
                await readmodel.prepare(conn, schema)
            return
        except asyncpg.UniqueViolationError:
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)
