"""The operator web console at /ui: static files (plain HTML, CSS and ES
modules in api/ui_static, no build step) that use the JSON API under /v1
with the token the person logs in with, and /v1/stream for live events.

The files are small and few, so they are read once, when the app is made,
and answered from memory (no file system or worker thread per request:
the first page's ten files arrive in one round of requests even on a busy
machine), each with an ETag for revalidation.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router

STATIC = Path(__file__).resolve().parent / "ui_static"

# The console loads nothing from elsewhere and runs no inline script.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always revalidated (a cheap 304): a new release shows at once.
    "Cache-Control": "no-cache",
}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".png": "image/png"}  # fmt: skip


class _File:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.media_type = TYPES.get(path.suffix, guessed)


def _files() -> dict[str, _File]:
    return {p.name: _File(p) for p in sorted(STATIC.iterdir()) if p.is_file()}


def mount() -> Mount:
    files = _files()

    async def serve(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        found = files.get(name)
        if found is None:
            raise HTTPException(404)
        headers = {**HEADERS, "ETag": found.etag}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else found.body
        response = Response(body, media_type=found.media_type, headers=headers)
        if request.method == "HEAD":
            response.headers["Content-Length"] = str(len(found.body))
        return response

    return Mount(
        "/ui",
        app=Router(
            routes=[
                Route("/", serve, methods=["GET", "HEAD"]),
                Route("/{name:str}", serve, methods=["GET", "HEAD"]),
            ],
            redirect_slashes=False,
        ),
        name="ui",
    )
