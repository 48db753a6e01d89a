"""Every command route, fabric and tenant, in one list."""

from __future__ import annotations

from typing import Any

from cloud_engine.api.routes_fabric import FABRIC_ROUTES
from cloud_engine.api.routes_tenant import TENANT_ROUTES
from cloud_engine.api.routing import CommandRoute

COMMAND_ROUTES: list[CommandRoute[Any]] = [*FABRIC_ROUTES, *TENANT_ROUTES]


def _check_unique() -> None:
    seen: set[tuple[str, str]] = set()
    for route in COMMAND_ROUTES:
        key = (route.method, route.path)
        if key in seen:
            raise RuntimeError(f"two command routes for {route.method} {route.path}")
        seen.add(key)


_check_unique()
