"""What `up` does when something it started ends on its own: starts it again.

Two kinds of parts:
- servers (the embedded PostgreSQL, the dev broker and its store): a
  thread (InfraWatch) looks at their processes every CHECK_S and starts a
  dead one again on the same socket or port, so every client finds it where
  it was and reconnects by itself;
- components (API, relay, projection worker, engine, effector): each runs
  under `supervised`, which makes a new one and runs it again when its run
  raised or returned while nothing asked it to stop.

Both back off (BACKOFF_S, reset once a part has run HEALTHY_S), log every
end and start, and count restarts by part (`Restarts`, exported on the API's
/metrics as cloudengine_up_restarts_total{part=...}).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_engine.runner.components import Infrastructure

log = structlog.get_logger("runner.supervise")

# How often the servers' processes are looked at: a dead PostgreSQL costs
# at most this much on top of its own start (~0.5-1 s).
CHECK_S = 0.5
# Waits before each successive restart of one part; the last repeats.
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# A part that ran this long since its last start counts as healthy again.
HEALTHY_S = 30.0


class Component(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


class Restarts(Collector):
    """Restarts by part; thread-safe (the watch thread and the loop count)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, part: str) -> None:
        with self._lock:
            self._counts[part] = self._counts.get(part, 0) + 1

    def count(self, part: str) -> int:
        with self._lock:
            return self._counts.get(part, 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cloudengine_up_restarts",
            "Parts that `up` started again after they ended on their own",
            labels=["part"],
        )
        with self._lock:
            for part, n in sorted(self._counts.items()):
                family.add_metric([part], n)
        yield family


class Backoff:
    """The wait before a part's next start: longer each time it fails again
    soon, back to the shortest once it ran HEALTHY_S."""

    def __init__(self) -> None:
        self.failures = 0
        self.started = time.monotonic()

    def ended(self) -> float:
        if time.monotonic() - self.started >= HEALTHY_S:
            self.failures = 0
        delay = BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)]
        self.failures += 1
        return delay

    def starting(self) -> None:
        self.started = time.monotonic()


async def supervised(
    name: str,
    make: Callable[[], Component],
    stop: asyncio.Event,
    restarts: Restarts,
    on_start: Callable[[Component], None] | None = None,
) -> None:
    """Run a component made by `make` until stop is set; one whose run
    raised or returned before that is replaced by a new one, after a
    backoff. Components keep their state in PostgreSQL and the broker
    (positions, committed offsets, the log), so a new one resumes where
    the last one stopped."""
    backoff = Backoff()
    while True:
        component = make()
        if on_start is not None:
            on_start(component)
        backoff.starting()
        try:
            await component.run(stop)
            error: BaseException | None = None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = e
        if stop.is_set():
            if error is not None:
                log.warning("component failed while stopping", component=name, error=repr(error))
            return
        delay = backoff.ended()
        restarts.note(name)
        log.error(
            "component ended, restarting",
            component=name,
            error=repr(error) if error else "returned on its own",
            restart_in_s=delay,
            restarts=restarts.count(name),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return


class InfraWatch:
    """A thread restarting the embedded PostgreSQL and the dev broker when
    their processes are gone (a crash, the OOM killer, a kill -9).

    A thread of its own, living as long as the servers: the dev broker's
    processes get SIGTERM when the thread that started them ends (see
    bus.broker._die_with_parent), and a restart must not block the event
    loop the API answers on. stop() before the teardown stops the servers,
    so the watch does not start again what is being stopped."""

    def __init__(self, infra: Infrastructure, restarts: Restarts) -> None:
        self.infra = infra
        self.restarts = restarts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="infra-watch", daemon=True)
        self._backoff = {"postgresql": Backoff(), "broker": Backoff()}
        # When a dead server is started again (absent: it runs).
        self._due: dict[str, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_S):
            db, broker = self.infra.embedded_db, self.infra.dev_broker
            if db is not None and not db.running():
                self._restart("postgresql", db.restart)
            if broker is not None and not broker.running() and not self._stop.is_set():
                self._restart("broker", broker.restart)

    def _restart(self, part: str, restart: Callable[[], None]) -> None:
        backoff = self._backoff[part]
        now = time.monotonic()
        if part not in self._due:
            delay = backoff.ended()
            self._due[part] = now + delay
            self.restarts.note(part)
            log.error(
                "server ended, restarting",
                part=part,
                restart_in_s=delay,
                restarts=self.restarts.count(part),
            )
        if now < self._due[part]:
            return
        began = time.monotonic()
        try:
            restart()
        except Exception as e:
            delay = backoff.ended()
            self._due[part] = time.monotonic() + delay
            log.error("restart failed", part=part, error=repr(e), retry_in_s=delay)
            return
        del self._due[part]
        backoff.starting()
        log.warning("server restarted", part=part, took_s=round(time.monotonic() - began, 2))


class Supervised:
    """A component slot for run_in_stages: runs the components `make`
    returns under `supervised`; `current` is the one running now."""

    def __init__(self, name: str, make: Callable[[], Component], restarts: Restarts) -> None:
        self.name = name
        self.make = make
        self.restarts = restarts
        self.current: Component | None = None

    def _started(self, component: Component) -> None:
        self.current = component

    async def run(self, stop: asyncio.Event) -> None:
        await supervised(self.name, self.make, stop, self.restarts, self._started)
