"""Starting the shared infrastructure: the event store and the broker.

Embedded defaults when nothing is configured (an embedded PostgreSQL, the
Tansu dev broker); external servers when CLOUD_ENGINE_DATABASE_URL or
CLOUD_ENGINE_KAFKA_BOOTSTRAP name them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cloud_engine.api.kafka_gateway import GatewayConfig
from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.bus.relay import RelayConfig
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, resolve_database
from cloud_engine.infra.settings import Settings

BROKER_DBNAME = "tansu"


@dataclass
class Infrastructure:
    target: DatabaseTarget
    bootstrap: str
    embedded_db: EmbeddedPostgres | None = None
    dev_broker: DevBroker | None = None
    stopped: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.dev_broker is not None:
            self.dev_broker.stop()
            self.stopped.append("broker")
        if self.embedded_db is not None:
            self.embedded_db.stop()
            self.stopped.append("database")


def start_infrastructure(settings: Settings, *, broker: bool = True) -> Infrastructure:
    target, embedded = resolve_database(settings)
    infra = Infrastructure(
        target=target, bootstrap=settings.kafka_bootstrap or "", embedded_db=embedded
    )
    if broker and not settings.kafka_bootstrap:
        try:
            infra.dev_broker = DevBroker(
                log_file=settings.data_dir / "dev-broker.log",
                database=None if embedded is None else broker_database(embedded.target),
                state_dir=settings.data_dir,
                retention=Policy(
                    retention_s=settings.dev_broker_retention_s,
                    group_idle_s=settings.dev_broker_group_idle_s,
                ),
            )
            infra.bootstrap = infra.dev_broker.start()
        except BaseException:
            infra.stop()
            raise
    return infra


def broker_database(events: DatabaseTarget) -> DatabaseTarget:
    """The dev broker's records: a database of their own on the embedded
    server, beside the event store's. With an external PostgreSQL the dev
    broker stays in memory: creating databases on someone else's server is
    not up's to do (and such a setup points CLOUD_ENGINE_KAFKA_BOOTSTRAP at
    a real Kafka)."""
    return DatabaseTarget(
        host=events.host,
        port=events.port,
        user=events.user,
        password=events.password,
        dbname=BROKER_DBNAME,
    )


@contextmanager
def command_service(
    target: DatabaseTarget, settings: Settings
) -> Iterator[tuple[CommandService, EventStore]]:
    """The event store and a command service on it, sized and tuned by the
    settings: what every process that writes commands opens (up, api,
    engine). Both are closed on the way out, the service (its writer
    thread) first."""
    store = EventStore(target, pool_size=settings.db_pool_size)
    service = CommandService(
        store,
        batch_max=settings.command_batch_max,
        max_retries=settings.command_max_retries,
        cache_size=settings.aggregate_cache_size,
    )
    try:
        yield service, store
    finally:
        service.close()
        store.close()


def ensure_event_store(target: DatabaseTarget) -> None:
    """Create the event store's tables if missing: components that only read
    the log (relay, replay, projections) may start on a fresh database."""
    EventStore(target, pool_size=1).close()


def relay_config(settings: Settings, bootstrap: str) -> RelayConfig:
    return RelayConfig(
        bootstrap=bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.topic_partitions,
        source=settings.event_source,
        batch_size=settings.relay_batch_size,
    )


def gateway_config(settings: Settings, bootstrap: str) -> GatewayConfig:
    """The Kafka command gateway's: answers from the events' source."""
    return GatewayConfig(
        bootstrap=bootstrap,
        topic_prefix=settings.topic_prefix,
        source=settings.event_source,
        partitions=settings.topic_partitions,
    )
