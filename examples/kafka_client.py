"""Drive cloud-engine over Kafka alone, with plain aiokafka: send a command,
wait for its one answer and, with --follow, the events of the operation
it started until that ends. See docs/events.md, "Commands over Kafka".

    CLOUD_ENGINE_TOKEN=ce_... python examples/kafka_client.py \\
        --bootstrap 127.0.0.1:9092 --follow DeployVm \\
        '{"account": "demo", "name": "web-1", "zone_id": "...", "template_id": "...",
          "spec": {"cpus": 1, "ram_mb": 512, "root_disk_gb": 1}, "network_ids": ["..."]}'

Prints the answer (and each operation event) as a JSON line; exits 0 when
the command was accepted (and, with --follow, its operation succeeded), 1
otherwise. The token comes from the environment, never the command line
(where any user of the machine could read it). Send the same command again
with the same --id to retry it safely: it runs once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

SOURCE = "/examples/kafka-client"
ENDED = {"succeeded", "failed", "compensated"}


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer.topics()  # refreshes the metadata
        found = consumer.partitions_for_topic(topic)
    if not found:
        raise SystemExit(f"no topic {topic}: is cloud-engine's command gateway running?")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def run(args: argparse.Namespace, token: str) -> int:
    command_id = args.id or str(uuid.uuid4())
    results = f"{args.prefix}.command.results"
    operations = f"{args.prefix}.operation.events"
    # No consumer group: this client reads from the end of the results (and
    # operation) topics as they are when it starts, so it is positioned
    # there before the command is sent and cannot miss the answer. A
    # long-running integrator would use a group and commit its offsets.
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        assigned = await partitions(consumer, results)
        if args.follow:
            assigned += await partitions(consumer, operations)
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)  # settles the end now, before sending
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", command_id.encode()),
            ("ce_source", SOURCE.encode()),
            ("ce_type", args.type.encode()),
            ("content-type", b"application/json"),
            ("authorization", f"Bearer {token}".encode()),
        ]
        await producer.send_and_wait(
            f"{args.prefix}.commands",
            args.data.encode(),
            key=command_id.encode(),  # same key, same partition: in order
            headers=headers,
        )
        try:
            return await answer_and_events(consumer, args, command_id)
        except TimeoutError:
            print(f"kafka_client: nothing more within {args.timeout} s", file=sys.stderr)
            return 1
    finally:
        await producer.stop()
        await consumer.stop()


async def answer_and_events(
    consumer: AIOKafkaConsumer, args: argparse.Namespace, command_id: str
) -> int:
    results = f"{args.prefix}.command.results"
    operations = f"{args.prefix}.operation.events"
    operation_id: str | None = None
    async with asyncio.timeout(args.timeout):
        async for record in consumer:
            fields = {name: value.decode() for name, value in record.headers}
            if record.topic == results and record.key == command_id.encode():
                answer: dict[str, Any] = json.loads(record.value or b"{}")
                print(json.dumps({"answer": fields["ce_type"], **answer}), flush=True)
                if fields["ce_type"] != "io.cloudengine.command.accepted.v1":
                    return 1
                operation_id = answer.get("operation_id")
                if not args.follow or operation_id is None:
                    return 0
            elif record.topic == operations and operation_id is not None:
                if record.key != operation_id.encode():
                    continue
                event = fields["ce_type"].split(".")[3]  # io.cloudengine.operation.<event>.vN
                print(json.dumps({"operation": operation_id, "event": event}), flush=True)
                if event in ENDED:
                    return 0 if event == "succeeded" else 1
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("type", help="the command, e.g. DeployVm (schemas/commands/<type>.json)")
    parser.add_argument("data", help="the command as JSON")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default="cloudengine", help="CLOUD_ENGINE_TOPIC_PREFIX")
    parser.add_argument("--id", help="ce_id, the idempotency key (default: a new UUID)")
    parser.add_argument("--follow", action="store_true", help="follow the operation it starts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait in all")
    args = parser.parse_args()
    token = os.environ.get("CLOUD_ENGINE_TOKEN")
    if not token:
        print("kafka_client: set CLOUD_ENGINE_TOKEN", file=sys.stderr)
        return 2
    return asyncio.run(run(args, token))


if __name__ == "__main__":
    sys.exit(main())
