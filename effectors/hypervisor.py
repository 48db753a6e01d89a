"""A libvirt connection that retries what is worth retrying.

Every effector talks to a host through one Hypervisor. libvirt errors become
HypervisorError carrying libvirt's code and message (never swallowed);
transient ones (the connection dropped, the daemon restarting, a timed-out
RPC) are retried with jittered exponential backoff after reconnecting.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import libvirt
import structlog

log = structlog.get_logger("effectors.hypervisor")

T = TypeVar("T")

# libvirt error codes that say "try again", not "this cannot be done".
TRANSIENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    }
)


class HypervisorError(Exception):
    """A libvirt call failed; code and message are libvirt's own."""

    def __init__(self, uri: str, action: str, code: int, message: str) -> None:
        super().__init__(f"{action} on {uri}: {message} (libvirt error {code})")
        self.uri = uri
        self.action = action
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        # A pool busy building another volume (a clone, a copy) refuses a
        # refresh or a create until it is done: wait, as for a timeout.
        busy = "asynchronous jobs" in self.message
        busy = busy and self.code == libvirt.VIR_ERR_OPERATION_INVALID
        return self.code in TRANSIENT_CODES or busy


def _silence_default_handler() -> None:
    # libvirt prints every error to stderr by default; ours are raised and
    # logged as structured events instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_silence_default_handler()


class Hypervisor:
    def __init__(
        self,
        uri: str,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
    ) -> None:
        self.uri = uri
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    @property
    def conn(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is not None and self._alive(conn):
            return conn
        with self._lock:  # one reconnect for all the threads that saw it die
            if self._conn is None or not self._alive(self._conn):
                self._conn = self._open()
            return self._conn

    def _alive(self, conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _open(self) -> libvirt.virConnect:
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise self.error("connect", e) from e

    def error(self, action: str, e: libvirt.libvirtError) -> HypervisorError:
        code = e.get_error_code()
        return HypervisorError(self.uri, action, int(code or 0), e.get_error_message() or str(e))

    def call(
        self, action: str, fn: Callable[[libvirt.virConnect], T], *, attempts: int | None = None
    ) -> T:
        """fn(connection), retried on transient errors (reconnecting first);
        any other libvirt error is raised as HypervisorError at once.
        attempts, when given, replaces the connection's own count."""
        attempts = self.attempts if attempts is None else max(1, attempts)
        for attempt in range(1, attempts + 1):
            conn = None
            try:
                conn = self.conn
                return fn(conn)
            except libvirt.libvirtError as e:
                failure = self.error(action, e)
            except HypervisorError as e:  # from reconnecting
                failure = e
            if not failure.transient or attempt == attempts:
                raise failure
            delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            log.warning(
                "hypervisor_retry",
                uri=self.uri,
                action=action,
                attempt=attempt,
                code=failure.code,
                error=failure.message,
                delay_s=round(delay, 3),
            )
            if conn is not None:
                self._drop(conn)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _drop(self, conn: libvirt.virConnect) -> None:
        # The next call reconnects. The old connection is not closed here:
        # other threads may be mid-call on it, and closing a libvirt
        # connection under them crashes the process (seen: SIGSEGV in
        # virNetworkIsPersistent). The last reference to go closes it; a
        # lifecycle callback holds one, which the reconciler takes off when
        # it sees the new connection.
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def close(self) -> None:
        """Let go of the connection: closed once no call (nor a lifecycle
        callback) holds it; a thread may outlive a cancelled task at
        shutdown."""
        # No lock: a reconnect in progress (slow, to a remote host) must not
        # hold up a shutdown on the event loop.
        self._conn = None
