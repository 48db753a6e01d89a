"""Commands over Kafka: round trip (publish -> answer received) at a steady
rate, against the same commands over HTTP in the same run.

Setup, all started here: an embedded PostgreSQL in a temporary directory,
the dev broker (Tansu; its records in memory, as the other benchmarks run
it, or with --broker-storage postgres in a database of that PostgreSQL, as
`up` does: see docs/performance.md, "The durable dev broker"), the event store
and command service, a fabric (1 zone, 10 hosts, a pool, a Ready template,
a network) and a user token. The server side is what `up` runs for this
path, on one event loop (uvloop): the HTTP API (create_app + ApiServer) and
the command gateway (api.kafka_gateway), sharing the command service.

The client runs in a separate process, as an integrator would: plain
aiokafka, a producer (acks=all) and a consumer assigned to every partition
of the results topic (positioned at its end before the first command,
fetch_max_wait_ms 10 as the gateway's: the dev broker answers a fetch only
when that expires, where Kafka answers as soon as a record is there). It
sends DeployVm commands (each a new ce_id, keyed by it) as a
Poisson stream of --rate per second for --seconds; the round trip of one
is from just before producer.send to its answer read by the consumer.
Then the baseline: the same deploys as HTTP POST /v1/vms (each a new
Idempotency-Key), paced the same way by 10 clients on keep-alive
connections, timed from writing the request to reading the response. 50
of each first, untimed. Nothing else runs (no relay, engine or
projections): only the accept path is timed, as bench/api.py does for HTTP.
Each phase also reports the CPU time per command of the client, the
server process, the broker and PostgreSQL.

    python bench/kafka_commands.py [--rate 100] [--seconds 20] [--broker-storage memory|postgres]
                                   [--partitions 8]

Last line: kafka_command_p99_ms=<n> kafka_command_p50_ms=<n> http_command_p99_ms=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from cloud_engine.api import tokens
from cloud_engine.api.app import create_app
from cloud_engine.api.kafka_gateway import CommandGateway, GatewayConfig
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.api.server import ApiServer
from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.command_topics import commands_topic, results_topic
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.pg import connect
from cloud_engine.infra.process import run_on
from cloud_engine.infra.settings import load_settings
from cloud_engine.projections import readmodel
from cloud_engine.runner.components import broker_database
from tests.fabric import FabricSpec, NetworkSpec, PoolSpec, TemplateSpec, build, hosts

PREFIX = "bench"
ACCOUNT = "bench"
WARM_UP = 50
HTTP_CLIENTS = 10
FABRIC = FabricSpec(
    zone="bench",
    hosts=hosts(10, "qemu:///system", cpu_cores=4096, ram_mb=2**24),
    pools=(PoolSpec(name="pool", url="/srv/pool", capacity_bytes=10**16),),
    templates=(
        TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2", size_bytes=10**8, os_type="linux"),
    ),
    networks=(NetworkSpec(name="net", account=ACCOUNT, cidr="10.100.0.0/16"),),
)


@dataclass(frozen=True)
class Plan:
    bootstrap: str
    api_port: int
    token: str
    deploy: dict[str, Any]
    rate: float
    seconds: float
    seed: int
    # CPU is counted per phase for these: the server, the broker, PostgreSQL.
    pids: dict[str, list[int]]


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU time (user + system) so far of each part, its processes' and
    their children's (PostgreSQL's backends are the postmaster's)."""
    out: dict[str, float] = {"client": sum(os.times()[:2])}
    for part, roots in pids.items():
        total = 0.0
        for root in roots:
            try:
                process = psutil.Process(root)
                for p in [process, *process.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        out[part] = total
    return out


def cpu_line(before: dict[str, float], after: dict[str, float], commands: int) -> str:
    parts = [f"{k} {(after[k] - before[k]) * 1e3 / commands:.2f}" for k in after]
    return "CPU ms per command: " + ", ".join(parts)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summary(ms: list[float], seconds: float) -> str:
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.2f} ms p99={percentile(ms, 99):.2f} ms"
        f" max={max(ms):.2f} ms mean={statistics.fmean(ms):.2f} ms ({len(ms) / seconds:.0f}/s)"
    )


async def poisson(rate: float, seconds: float, seed: int, send: Any) -> None:
    """Call send() at exponential intervals: a Poisson stream of `rate`/s."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    due = loop.time() + 0.05
    end = due + seconds
    while due < end:
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await send()
        due += rng.expovariate(rate)


# The client process ----------------------------------------------------------------


def headers_for(ce_id: str, token: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"/bench"),
        ("ce_type", b"DeployVm"),
        ("content-type", b"application/json"),
        ("authorization", f"Bearer {token}".encode()),
    ]


async def over_kafka(plan: Plan, count: int | None, seconds: float) -> dict[str, list[float]]:
    """Round trips of DeployVm commands: `count` back to back, or paced for
    `seconds`; and their two parts, by the answer record's timestamp (its
    producer's clock, this machine's): publish -> the gateway sent the
    answer, and that -> the answer read here."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=plan.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    producer = AIOKafkaProducer(bootstrap_servers=plan.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        await consumer.topics()
        found = consumer.partitions_for_topic(results_topic(PREFIX)) or set()
        partitions = [TopicPartition(results_topic(PREFIX), p) for p in sorted(found)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        sent: dict[bytes, tuple[float, float]] = {}
        ms: list[float] = []
        gateway: list[float] = []
        reading: list[float] = []
        done = asyncio.Event()
        expected = count

        async def receive() -> None:
            async for record in consumer:
                began = sent.pop(record.key or b"", None)
                if began is None:
                    continue
                ms.append((time.perf_counter() - began[0]) * 1e3)
                gateway.append(record.timestamp - began[1] * 1e3)
                reading.append(time.time() * 1e3 - record.timestamp)
                status = dict(record.headers).get("ce_status", b"")
                if status != b"202":
                    raise RuntimeError(f"refused: {status!r} {record.value!r}")
                if expected is not None and len(ms) >= expected and not sent:
                    done.set()

        n = 0

        async def send() -> None:
            nonlocal n
            n += 1
            ce_id = uuid.uuid4().hex
            value = json.dumps({**plan.deploy, "name": f"k-{ce_id[:12]}"}).encode()
            sent[ce_id.encode()] = (time.perf_counter(), time.time())
            await producer.send(
                commands_topic(PREFIX),
                value,
                key=ce_id.encode(),
                headers=headers_for(ce_id, plan.token),
            )

        receiver = asyncio.create_task(receive())
        if count is not None:
            for _ in range(count):
                await send()
                await asyncio.sleep(0.005)
        else:
            await poisson(plan.rate, seconds, plan.seed, send)
            expected = n
            if len(ms) >= n:
                done.set()
        await asyncio.wait_for(done.wait(), 60)
        receiver.cancel()
        return {"ms": ms, "gateway": gateway, "reading": reading}
    finally:
        await producer.stop()
        await consumer.stop()


class Http:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)


async def over_http(plan: Plan, count: int | None, seconds: float) -> list[float]:
    connections = [await Http.open(plan.api_port) for _ in range(HTTP_CLIENTS)]
    idle: asyncio.Queue[Http] = asyncio.Queue()
    for c in connections:
        idle.put_nowait(c)
    ms: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one() -> None:
        http = await idle.get()
        try:
            body = json.dumps({**plan.deploy, "name": f"h-{uuid.uuid4().hex[:12]}"}).encode()
            headers = {
                "Authorization": f"Bearer {plan.token}",
                "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex,
            }
            began = time.perf_counter()
            status, answer = await http.post("/v1/vms", body, headers)
            ms.append((time.perf_counter() - began) * 1e3)
            if status != 202:
                raise RuntimeError(f"refused: {status} {answer!r}")
        finally:
            idle.put_nowait(http)

    async def send() -> None:
        tasks.append(asyncio.create_task(one()))

    if count is not None:
        for _ in range(count):
            await one()
    else:
        await poisson(plan.rate, seconds, plan.seed + 1, send)
        await asyncio.gather(*tasks)
    for c in connections:
        c.writer.close()
    return ms


async def client(plan: Plan) -> dict[str, Any]:
    await over_kafka(plan, WARM_UP, 0)
    await over_http(plan, WARM_UP, 0)
    began = cpu_seconds(plan.pids)
    kafka_parts = await over_kafka(plan, None, plan.seconds)
    kafka = kafka_parts["ms"]
    middle = cpu_seconds(plan.pids)
    http = await over_http(plan, None, plan.seconds)
    ended = cpu_seconds(plan.pids)
    return {
        "kafka": kafka,
        "kafka_gateway": kafka_parts["gateway"],
        "kafka_reading": kafka_parts["reading"],
        "http": http,
        "kafka_cpu": cpu_line(began, middle, len(kafka)),
        "http_cpu": cpu_line(middle, ended, len(http)),
    }


def client_process(plan: Plan, out: Any) -> None:
    out.send(asyncio.run(client(plan)))


# The server side -------------------------------------------------------------------


async def make_token(target: DatabaseTarget) -> str:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        return (await tokens.create(conn, target.schema, "user", ACCOUNT))[0]
    finally:
        await conn.close()


async def serve(
    target: DatabaseTarget, bootstrap: str, args: argparse.Namespace, pids: dict[str, list[int]]
) -> Any:
    store = EventStore(target, pool_size=8)
    service = CommandService(store)
    try:
        made = build(service, FABRIC)
        deploy = {
            "account": ACCOUNT,
            "zone_id": str(made.zone),
            "template_id": str(made.templates[0]),
            "spec": {"cpus": 1, "ram_mb": 512, "root_disk_gb": 10},
            "network_ids": [str(made.networks[0])],
        }
        token = await make_token(target)
        server = ApiServer(create_app(service, store, target), "127.0.0.1", 0)
        config = GatewayConfig(bootstrap=bootstrap, topic_prefix=PREFIX, partitions=args.partitions)
        gateway = CommandGateway(
            service, store, target, config, GatewayMetrics(CollectorRegistry())
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(server.run(stop)), asyncio.create_task(gateway.run(stop))]
        while not (server.started and gateway.started.is_set()):
            if any(t.done() for t in tasks):
                await asyncio.gather(*tasks)
            await asyncio.sleep(0.05)
        plan = Plan(bootstrap, server.port, token, deploy, args.rate, args.seconds, args.seed, pids)
        receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
        process = multiprocessing.get_context("spawn").Process(
            target=client_process, args=(plan, sending)
        )
        process.start()
        try:
            results = await asyncio.to_thread(receiving.recv)
        finally:
            await asyncio.to_thread(process.join)
            stop.set()
            await asyncio.gather(*tasks)
        return results
    finally:
        service.close()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100, help="commands/s, each way")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--broker-storage", choices=("memory", "postgres"), default="memory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--partitions", type=int, default=8, help="of the commands and results topics"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        # As deployed: JSON lines at info (a line per answer and request), into a file.
        log_file = open(os.path.join(tmp, "server.log"), "w")  # noqa: SIM115
        saved, sys.stderr = sys.stderr, log_file
        try:
            configure_logging("json", "info")
        finally:
            sys.stderr = saved
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        broker = None
        try:
            database = broker_database(pg.target) if args.broker_storage == "postgres" else None
            broker = DevBroker(database=database)
            bootstrap = broker.start()
            postmaster = int((Path(tmp) / "pgdata" / "postmaster.pid").read_text().split()[0])
            pids = {
                "server": [os.getpid()],
                "broker": [c.pid for c in psutil.Process().children() if "tansu" in c.name()],
                "postgres": [postmaster],
            }
            results = run_on(serve(pg.target, bootstrap, args, pids), "uvloop")
        finally:
            if broker is not None:
                broker.stop()
            pg.stop()
            log_file.close()
    kafka, http = results["kafka"], results["http"]
    print(f"broker: Tansu, records in {args.broker_storage}; {args.rate:.0f} commands/s each way")
    print(f"kafka round trip (DeployVm, publish -> answer read): {summary(kafka, args.seconds)}")
    parts = (
        (results["kafka_gateway"], "publish -> answer sent"),
        (results["kafka_reading"], "answer sent -> read"),
    )
    print(
        "  of which: "
        + "; ".join(
            f"{what} p50 {percentile(v, 50):.1f} / p99 {percentile(v, 99):.1f} ms"
            for v, what in parts
        )
    )
    print(f"  {results['kafka_cpu']}")
    print(f"baseline, HTTP POST /v1/vms (request -> response): {summary(http, args.seconds)}")
    print(f"  {results['http_cpu']}")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(
        f"kafka_command_p99_ms={percentile(kafka, 99):.1f}"
        f" kafka_command_p50_ms={percentile(kafka, 50):.1f}"
        f" http_command_p99_ms={percentile(http, 99):.1f}"
    )


if __name__ == "__main__":
    main()
