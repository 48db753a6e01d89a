"""The domains this effector is acting on, or acted on a moment ago.

A start, stop or migration makes libvirt emit lifecycle events for the
domain, and every lifecycle event wakes a reconciler round. Those events
are the echo of the effector's own work, whose result it reports itself:
during a burst of thousands of starts they kept the reconciler reading
every VM of the host round after round beside the work (a profile of
bench/effectors.py: 12 % of the loop's time). The reconciler leaves the
echo alone; anything else (a guest powering off, a crash, a domain
touched by hand) still wakes it, and the periodic round sees all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

# Events of an act arrive within milliseconds of it; a loaded machine may
# deliver them a little later.
WINDOW_S = 2.0


class OwnActs:
    """Thread-safe: marked on the event loop, asked on libvirt's event thread."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._acting: dict[UUID, int] = {}
        self._until: dict[UUID, float] = {}
        self._lock = threading.Lock()

    def begin(self, domain: UUID) -> None:
        with self._lock:
            self._acting[domain] = self._acting.get(domain, 0) + 1

    def end(self, domain: UUID) -> None:
        now = self.clock()
        with self._lock:
            left = self._acting.pop(domain, 1) - 1
            if left > 0:
                self._acting[domain] = left
            self._until[domain] = now + self.window_s
            if len(self._until) > 4096:  # bounded: forget the expired
                self._until = {d: t for d, t in self._until.items() if t > now}

    def recent(self, domain: UUID) -> bool:
        """Whether an event about this domain is the echo of an act."""
        with self._lock:
            return domain in self._acting or self._until.get(domain, 0.0) > self.clock()
