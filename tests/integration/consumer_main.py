"""A consumer process as deployed: runs until SIGTERM/SIGINT, then stops cleanly.

    python tests/integration/consumer_main.py BOOTSTRAP GROUP TOPIC OUTPUT

Consumes TOPIC in consumer group GROUP through bus.consumer.EventConsumer (with
an in-memory deduplicator, so a restarted process remembers nothing: whatever
its group's committed offsets do not cover is delivered again) and appends the
ce_id of every applied event to OUTPUT, one per line, flushed per line. Prints
"ready" once the signal handlers are installed and the consumer is starting.
Exits 0 after a clean stop; a failing consumer exits non-zero with its traceback.

Used by tests/integration/test_bus_contract.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from cloud_engine.infra.process import run_until_signalled


async def consume(args: argparse.Namespace, stop: asyncio.Event) -> None:
    with open(args.output, "a", encoding="utf-8") as output:

        async def record(event: CloudEvent, _ctx: object) -> None:
            output.write(event.id + "\n")
            output.flush()

        consumer = EventConsumer(
            ConsumerConfig(bootstrap=args.bootstrap, group_id=args.group, topics=[args.topic]),
            record,
            MemoryDeduplicator(),
        )
        running = asyncio.create_task(consumer.run())
        print("ready", flush=True)
        signalled = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            consumer.stop()
        await running  # the consumer's own failure, if any, fails the process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap")
    parser.add_argument("group")
    parser.add_argument("topic")
    parser.add_argument("output")
    args = parser.parse_args()
    asyncio.run(run_until_signalled(lambda stop: consume(args, stop)))
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
