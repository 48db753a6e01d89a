"""The Kafka gateway's figures, on the API's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from cloud_engine.api.metrics import BUCKETS


class GatewayMetrics:
    """Made once per process (`up` restarts the gateway, its counters go on)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answered = Counter(
            "cloudengine_kafka_commands",
            "Commands answered on the results topic, by outcome and HTTP-equivalent status",
            ["outcome", "status"],
            registry=registry,
        )
        self.duplicates = Counter(
            "cloudengine_kafka_command_duplicates",
            "Deliveries of a command already answered (not executed nor answered again)",
            registry=registry,
        )
        self.unanswerable = Counter(
            "cloudengine_kafka_commands_unanswerable",
            "Records on the commands topic without a ce_id to answer to (logged, skipped)",
            registry=registry,
        )
        self.round_trip = Histogram(
            "cloudengine_kafka_command_seconds",
            "From a command's record timestamp to its answer acknowledged by the broker",
            buckets=BUCKETS,
            registry=registry,
        )
