"""The operator web console at /ui: static files (plain HTML, CSS and ES
modules in api/ui_static, no build step) that use the JSON API under /v1
with the token the person logs in with, and /v1/stream for live events."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "ui_static"

# The console loads nothing from elsewhere and runs no inline script.
_POLICY = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class _Secured:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", _POLICY))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


def mount() -> Mount:
    return Mount("/ui", app=_Secured(StaticFiles(directory=STATIC, html=True)), name="ui")
