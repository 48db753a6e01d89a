"""All configuration in one typed object, read from CLOUD_ENGINE_* variables.

Documented in docs/operations.md; a bad value stops the program with a message
naming the variable, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import platformdirs

from cloud_engine.infra.logs import LogFormat, LogLevel

PREFIX = "CLOUD_ENGINE_"
# Every component's event loop; asyncio's own only to rule uvloop out.
EventLoop = Literal["uvloop", "asyncio"]
# What `up`'s demo hosts run on: lab hosts (namespaces on this machine, each
# its own libvirtd and real QEMU), libvirt's test driver, or auto: the lab
# where this machine can run it.
UpHypervisor = Literal["auto", "lab", "test"]
# How lab hosts run guests: kvm, qemu (TCG, emulated) or auto: KVM when
# /dev/kvm is usable and the hosts offer it.
DomainType = Literal["auto", "kvm", "qemu"]


class SettingsError(ValueError):
    """A configuration value is invalid."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # External PostgreSQL (postgresql://user:pass@host:port/db). Empty: embedded server.
    database_url: str | None = None
    # Where the embedded PostgreSQL keeps its data (and later, other local state).
    data_dir: Path = Path(platformdirs.user_data_dir("cloud-engine"))
    # PostgreSQL schema holding the event store tables.
    database_schema: str = "public"
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 4
    # Group commit: at most this many concurrent commands share one transaction.
    command_batch_max: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 256
    # Bounded retries of optimistic-concurrency conflicts before answering Conflict.
    command_max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 8
    # Aggregates kept in memory by the command service (0 disables the cache).
    # Every full garbage collection walks them all and stops the event loop
    # meanwhile (~9 objects an aggregate): the hot ones (hosts, pools,
    # networks) fit many times over; bench/gc_pauses.py measures the pause.
    aggregate_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    # Kafka bootstrap servers (host:port,...). Empty: the embedded dev broker.
    kafka_bootstrap: str | None = None
    # The durable dev broker deletes record batches older than this that
    # every consumer group which committed within dev_broker_group_idle_s
    # has read (0: keeps every batch; its fetches then slow with history).
    dev_broker_retention_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    dev_broker_group_idle_s: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0
    topic_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,100}$")] = "cloudengine"
    topic_partitions: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    # CloudEvents "source" attribute of every published event.
    event_source: Annotated[str, msgspec.Meta(min_length=1)] = "/cloudengine"
    # Most events the relay reads and publishes per round.
    relay_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    # The engine fails (and compensates) an operation step that waits longer
    # than this for the effectors; the sweep of unfinished operations runs
    # every operation_sweep_s.
    operation_step_deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    operation_sweep_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # Convergence asks an effector again to stop a destroyed VM's domain
    # found running only once the destroy (or the last such ask) is this old.
    convergence_stop_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Where `up` and `cloud-engine api` serve the HTTP API (flags override).
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Commands an API process has waiting for the writer before it answers
    # 503 at once instead of queueing more.
    api_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 2000
    event_loop: EventLoop = "uvloop"
    # auto: readable on a terminal, JSON otherwise (infra.logs).
    log_format: LogFormat = "auto"
    # Unset: info in JSON; on a terminal only warnings and lifecycle lines.
    log_level: LogLevel | None = None
    # `up`: its demo hosts' hypervisor and how many (unset: 3 lab hosts or 2
    # test-driver hosts; a data directory keeps the hosts it has), and the
    # domain type on lab hosts. The --hypervisor and --hosts flags override.
    up_hypervisor: UpHypervisor = "auto"
    up_hosts: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    up_domain_type: DomainType = "auto"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from the environment (CLOUD_ENGINE_DATABASE_URL, ...)."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        value = env.get(PREFIX + name.upper())
        if value is not None and value != "":
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        raise SettingsError(_explain(str(e))) from None


def _dec_hook(tp: type, value: object) -> object:
    if tp is Path and isinstance(value, str):
        return Path(value).expanduser()
    raise NotImplementedError


def _explain(message: str) -> str:
    # msgspec says "... - at `$.db_pool_size`"; name the environment variable.
    if "`$." in message:
        head, _, path = message.partition(" - at `$.")
        field = path.rstrip("`").split(".")[0].split("[")[0]
        return f"{PREFIX}{field.upper()}: {head}"
    return message
