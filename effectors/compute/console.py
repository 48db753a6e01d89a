"""A domain's serial console as a byte stream (libvirt's virDomainOpenConsole).

The domain XML gives every guest a serial port on a pty (domain_xml.py);
libvirt hands it out as a virStream on the connection to the domain's host,
one client at a time (FORCE takes it over from an earlier one, as `virsh
console --force` does). The stream is non-blocking and served by libvirt's
event loop (the thread reconciler.start_libvirt_event_loop runs), so reading
never holds the connection: read() waits on a condition the loop's callback
signals. Used by the API's console WebSocket (api/console.py) and the tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any
from uuid import UUID

import libvirt

from cloud_engine.effectors.reconciler import start_libvirt_event_loop

# Bytes kept for a reader that is slower than the guest writes: a console
# scrolls, and a client that cannot keep up loses the oldest output.
BUFFER_LIMIT = 1 << 20


class ConsoleError(RuntimeError):
    """The console could not be opened or broke; the message says why."""


class SerialConsole:
    def __init__(self, uri: str, uuid: UUID) -> None:
        start_libvirt_event_loop()
        self._cond = threading.Condition()
        self._buffer = bytearray()
        self._closed = False
        self._error: str | None = None
        try:
            self._conn: Any = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise ConsoleError(f"{uri}: {e.get_error_message()}") from None
        try:
            dom = self._conn.lookupByUUIDString(str(uuid))
            self._stream: Any = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            self._stream.eventAddCallback(
                libvirt.VIR_STREAM_EVENT_READABLE
                | libvirt.VIR_STREAM_EVENT_ERROR
                | libvirt.VIR_STREAM_EVENT_HANGUP,
                self._on_event,
                None,
            )
        except libvirt.libvirtError as e:
            self._conn.close()
            raise ConsoleError(e.get_error_message()) from None

    def _on_event(self, stream: Any, events: int, _opaque: object) -> None:
        # In libvirt's event loop thread: drain what is there.
        with self._cond:
            if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
                self._finish("the console closed")
            while not self._closed:
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError as e:
                    self._finish(e.get_error_message())
                    break
                if data == -2:  # nothing more for now
                    break
                if not data:
                    self._finish("the console closed")
                    break
                self._buffer += data
                del self._buffer[:-BUFFER_LIMIT]
            self._cond.notify_all()

    def _finish(self, why: str) -> None:
        if not self._closed:
            self._closed, self._error = True, why
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()

    def read(self, timeout_s: float) -> bytes:
        """What the guest wrote since the last read: at least one byte, or
        b"" after timeout_s. ConsoleError once the console is gone and
        everything it wrote was read."""
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._closed, timeout_s)
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
            if self._closed:
                raise ConsoleError(self._error or "closed")
            return b""

    def write(self, data: bytes) -> None:
        """Send keystrokes (a non-blocking stream may take part: the rest is
        sent after a moment)."""
        view = memoryview(data)
        while view:
            with self._cond:
                if self._closed:
                    raise ConsoleError(self._error or "closed")
                try:
                    sent = self._stream.send(bytes(view))
                except libvirt.libvirtError as e:
                    raise ConsoleError(e.get_error_message()) from None
            if sent == -2:
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        with self._cond:
            was_open = not self._closed
            self._finish("closed")
            self._cond.notify_all()
        if was_open:
            try:
                self._stream.finish()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    self._stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def __enter__(self) -> SerialConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, text: str, timeout_s: float) -> str:
        """Everything read until text appears (ConsoleError if it does not
        within timeout_s): for tests and scripted sessions."""
        seen = ""
        deadline = time.monotonic() + timeout_s
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsoleError(f"{text!r} did not appear; the console showed: {seen[-500:]!r}")
            seen += self.read(min(left, 1.0)).decode(errors="replace")
        return seen
