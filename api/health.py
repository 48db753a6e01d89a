"""Liveness, readiness, metrics and the OpenAPI document: no token needed."""

from __future__ import annotations

import asyncio

import structlog
from starlette.requests import Request
from starlette.responses import Response

from cloud_engine.api.codec import json_response
from cloud_engine.api.context import context_of
from cloud_engine.api.metrics import CONTENT_TYPE
from cloud_engine.api.openapi import document_bytes
from cloud_engine.api.problems import unavailable
from cloud_engine.api.views import Health

READY_TIMEOUT_S = 2.0

log = structlog.get_logger("api.health")


async def livez(_request: Request) -> Response:
    """The process answers; says nothing about its dependencies."""
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL (event store and read models) answers."""
    ctx = context_of(request)
    try:
        await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), READY_TIMEOUT_S)
    except Exception as error:  # any failure means: do not send traffic here
        log.warning("not ready", error=repr(error))
        raise unavailable(f"the database does not answer: {type(error).__name__}") from None
    return json_response(Health(status="ready", detail="database reachable"))


async def metrics(request: Request) -> Response:
    ctx = context_of(request)
    try:
        await ctx.metrics.refresh(ctx.pool, ctx.schema)
    except Exception as error:  # request metrics are still worth serving
        log.warning("engine gauges not refreshed", error=repr(error))
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(_request: Request) -> Response:
    return Response(document_bytes(), media_type="application/json")
