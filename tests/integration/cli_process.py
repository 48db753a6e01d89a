"""A `cloud-engine <verb>` as a real subprocess on the test's schema (and
broker and topic prefix), its output appended to (or written over) a log
file: the engine, effector, drainer and automation processes that the
kill tests start, stop and kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cloud_engine.infra.database import DatabaseTarget

REPO = Path(__file__).resolve().parents[2]
# The standard library's event loop (CLOUD_ENGINE_EVENT_LOOP in docs/operations.md).
ASYNCIO = {"CLOUD_ENGINE_EVENT_LOOP": "asyncio"}


def cli_env(
    target: DatabaseTarget,
    broker: str | None = None,
    prefix: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment without its CLOUD_ENGINE_ settings, then
    the test's database (broker, topic prefix), info logs, and extra last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(CLOUD_ENGINE_DATABASE_URL=target.url(), CLOUD_ENGINE_DATABASE_SCHEMA=target.schema)
    if broker is not None:
        env["CLOUD_ENGINE_KAFKA_BOOTSTRAP"] = broker
    if prefix is not None:
        env["CLOUD_ENGINE_TOPIC_PREFIX"] = prefix
    env["CLOUD_ENGINE_LOG_LEVEL"] = "info"
    env.update(extra or {})
    return env


class CliProcess:
    """`cloud-engine *args` in the repository, with env, output to log."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], log: Path, *, append: bool = True
    ) -> None:
        self.log = log
        self._out = log.open("ab" if append else "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud_engine.runner.cli", *args],
            cwd=REPO,
            env=dict(env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._out.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """sig (SIGTERM: a clean stop), then up to 30 s, then SIGKILL."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
