"""Serving the app with uvicorn as one component among others: bound to its
socket up front (so the URL is known, port 0 picks a free one) and stopped
by the same stop event as the relay, engine and effectors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from cloud_engine.api.live import end_streams


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process decides what a signal means (infra.process sets the stop
        # event); uvicorn must not install handlers of its own.
        yield


class ApiServer:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 8080) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets
        # whose proto says TCP, and accepted sockets inherit it; with proto 0
        # every keep-alive response waits ~40 ms on Nagle and delayed ACKs.
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.app = app
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            lifespan="on",
            # h11, not httptools: httptools answers a method it does not know
            # with its own text/plain 400 before the app sees it; h11 lets
            # the app answer a problem document (405).
            http="h11",
            log_config=None,
            access_log=False,  # api.middleware logs each request with its id
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self.server = _Server(config)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self.server.started

    async def run(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            end_streams(self.app)
            self.server.should_exit = True
            try:
                await serving
            finally:
                self.socket.close()
        if not self.server.started:
            raise RuntimeError("the API did not start (see the log for the lifespan error)")
