"""Web console: first page interactive, and live event latency, in Debian's
chromium (headless, driven by Playwright; nothing downloaded).

Setup, all started here as `up` runs them: an embedded PostgreSQL in a
temporary directory, the dev broker, the relay, the projection worker, the
engine (operation manager, result recorder), an effector on libvirt's test
driver, and the API with its live stream; a fabric over HTTP (1 zone, pod
and cluster, --hosts hosts, a pool, a template fetched over loopback) and
--vms VMs deployed through the API and Running.

Timed:

1. first page interactive: a new browser context (empty cache) opens
   /ui/ with the admin token and role already in the tab (as a tab that
   logged in has them: the login's one request, GET /v1/hosts?limit=1,
   told the role), and
   the console marks `ce-view-ready` once its first view (the fabric tree,
   every host with its capacity bars) is drawn and focused; the figure is
   that mark's time from navigation start (the browser's own clock).
   Baseline, same run: navigation start to load end of /livez in the same
   browser, the floor of one page round trip.
2. live event latency: the admin's console on its live events page; the
   bench disables and enables a zone --events times (one event each, one
   every 50 ms); for each event, the time the page received and drew it
   (Date.now() in the page) minus its ce_time (recorded just before the
   commit). Baseline, same run: a plain aiokafka consumer on the same
   topic in the bench process, receive time minus ce_time.

--screenshots DIR also saves the main pages as PNGs (docs/ui/).

    python bench/ui.py [--samples 10] [--events 200] [--vms 3] [--screenshots docs/ui]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer
from playwright.async_api import Browser, Page, async_playwright

from cloud_engine.api.live import LiveConfig
from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.naming import topic_for
from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.settings import load_settings
from cloud_engine.orchestration.manager import OperationManager, manager_config
from cloud_engine.orchestration.recorder import ResultRecorder
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from tests import fabric
from tests.integration.api.api_harness import Api, start_api
from tests.integration.effectors.template_server import qemu_img, serve

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PREFIX = "bench"
# Per first-page sample: when the last module and the last API answer arrived.
SPLITS: list[tuple[float, float]] = []


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def wait_for(what: str, probe: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def build(api: Api, tmp: Path, hosts: int, vms: int, url: str, sha256: str) -> str:
    spec = fabric.FabricSpec(
        hosts=fabric.hosts(hosts, cpu_cores=16, ram_mb=32768),
        pools=(fabric.PoolSpec(url=str(tmp / "primary"), capacity_bytes=256 << 30),),
        image_stores=(fabric.ImageStoreSpec(url=str(tmp / "secondary")),),
        templates=(
            fabric.TemplateSpec(
                url=url,
                size_bytes=4 << 20,
                os_type="linux",
                checksum=f"sha256:{sha256}",
                state="requested",
            ),
        ),
    )
    made = await fabric.build_http(api, spec, admin=api.admin)

    async def ready() -> bool:
        reply = await api.get(f"/v1/templates/{made.template}")
        return bool(reply.json()["state"] == "Ready")

    await wait_for("template Ready", ready)
    for n in range(vms):
        size = {"cpus": 1, "ram_mb": 512, "root_disk_gb": 1}
        body = {"name": f"web-{n + 1}", "zone_id": made.zone, "template_id": made.template,
                "account": "alice", "spec": size}  # fmt: skip
        reply = await api.post("/v1/vms", body, key=f"bench-{n}")
        assert reply.status == 202, reply.body

    async def running() -> bool:
        items = (await api.get("/v1/vms?state=Running&limit=500")).json()["items"]
        return len(items) >= vms

    await wait_for("VMs Running", running)
    return made.zone


async def first_page(browser: Browser, base: str, token: str) -> tuple[float, float]:
    context = await browser.new_context()
    try:
        # A tab that logged in (token and role found then), reopened.
        await context.add_init_script(
            f"sessionStorage.setItem('cloud-engine.token', {token!r});"
            " sessionStorage.setItem('cloud-engine.role', 'admin');"
        )
        page = await context.new_page()
        await page.goto(f"{base}/ui/#/fabric")
        await page.wait_for_function(
            "() => performance.getEntriesByName('ce-view-ready').length > 0"
        )
        await page.wait_for_selector("meter")
        ready = await page.evaluate("performance.getEntriesByName('ce-view-ready')[0].startTime")
        split = await page.evaluate(
            "() => { const r = performance.getEntriesByType('resource');"
            " const end = (f) => Math.max(0, ...r.filter(f).map(e => e.responseEnd));"
            " return [end(e => e.name.endsWith('.js')),"
            " end(e => e.initiatorType === 'fetch' && !e.name.includes('/v1/stream'))]; }"
        )
        SPLITS.append((float(split[0]), float(split[1])))
        floor_page = await context.new_page()
        await floor_page.goto(f"{base}/livez")
        floor = await floor_page.evaluate(
            "performance.getEntriesByType('navigation')[0].loadEventEnd"
        )
        return float(ready), float(floor)
    finally:
        await context.close()


def _epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


async def live_latency(
    api: Api, page: Page, bootstrap: str, zone: str, count: int
) -> tuple[list[float], list[float]]:
    consumer = AIOKafkaConsumer(
        topic_for(PREFIX, "zone"),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    plain: dict[str, float] = {}

    async def read() -> None:
        async for record in consumer:
            received = time.time() * 1000
            headers = dict(record.headers)
            plain[headers["ce_id"].decode()] = received - _epoch_ms(headers["ce_time"].decode())

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(2)  # both consumers positioned at the end
        first = (await api.get(f"/v1/zones/{zone}")).json()["version"]
        for n in range(count):
            verb = "disable" if n % 2 == 0 else "enable"
            reply = await api.post(f"/v1/zones/{zone}/{verb}", {})
            assert reply.status == 202, reply.body
            await asyncio.sleep(0.05)
        last = f"{zone}:{first + count}"
        await page.wait_for_selector(f"li[data-event='{last}']", timeout=60_000)
        await wait_for("the plain consumer", lambda: asyncio.sleep(0, last in plain), 60)
        rows = await page.eval_on_selector_all(
            "li[data-event]",
            "items => items.map(li => [li.dataset.event, Number(li.dataset.received),"
            " li.querySelector('time').getAttribute('datetime')])",
        )
    finally:
        reader.cancel()
        await consumer.stop()
    ui = [received - _epoch_ms(at) for ident, received, at in rows if ident.startswith(zone)]
    bus = [v for k, v in plain.items() if k.startswith(zone)]
    return ui, bus


async def screenshots(page: Page, base: str, out: Path, vm_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    await page.set_viewport_size({"width": 1100, "height": 680})
    for name, route, selector in [
        ("fabric", "#/fabric", "meter"),
        ("vms", "#/vms", "tr[data-vm]"),
        ("operations", "#/operations", "tr[data-operation]"),
        ("history", f"#/history/vms/{vm_id}", "tr[data-version]"),
        ("events", "#/events", "li[data-event]"),
    ]:
        await page.goto(f"{base}/ui/{route}")
        await page.wait_for_selector(selector)
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(out / f"{name}.png"))
    assert page.context.browser is not None
    fresh = await page.context.browser.new_context(viewport={"width": 1100, "height": 420})
    login = await fresh.new_page()
    await login.goto(f"{base}/ui/")
    await login.wait_for_selector("#token")
    await login.screenshot(path=str(out / "login.png"))
    await fresh.close()


async def run(args: argparse.Namespace, tmp: Path, bootstrap: str, pg: EmbeddedPostgres) -> None:
    target = pg.target
    store = EventStore(target)
    service = CommandService(store)
    running, stop_api, api_task = await start_api(
        target, service, store, live=LiveConfig(bootstrap, PREFIX)
    )
    stop = asyncio.Event()
    parts: list[Any] = [
        Relay(target, RelayConfig(bootstrap=bootstrap, topic_prefix=PREFIX)),
        ProjectionWorker(target, consumer_config(bootstrap, PREFIX)),
        OperationManager(service, store, target, manager_config(bootstrap, PREFIX)),
        ResultRecorder(service, bootstrap, PREFIX),
        EffectorService(
            target,
            effector_config(bootstrap, PREFIX),
            names=Names(prefix=f"ce-bench{uuid.uuid4().hex[:6]}-"),
            name="effector@bench-ui",
            stop_timeout_s=5.0,
        ),
    ]
    tasks = [asyncio.create_task(p.run(stop)) for p in parts]
    www = tmp / "www"
    www.mkdir()
    image = www / "tiny.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4M")
    try:
        with serve(www) as served:
            sha = hashlib.sha256(image.read_bytes()).hexdigest()
            zone = await build(
                running, tmp, args.hosts, args.vms, f"{served.base_url}/tiny.qcow2", sha
            )
        base = f"http://127.0.0.1:{running.port}"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                await first_page(browser, base, running.admin)  # warm-up, not counted
                samples = [
                    await first_page(browser, base, running.admin) for _ in range(args.samples)
                ]
                ready = [s[0] for s in samples]
                floor = [s[1] for s in samples]
                modules = statistics.median(x[0] for x in SPLITS[1:])
                answers = statistics.median(x[1] for x in SPLITS[1:])
                print(
                    f"  of which: last module received p50 {modules:.0f} ms,"
                    f" last API answer received p50 {answers:.0f} ms"
                )
                print(
                    f"first page interactive: p50 {statistics.median(ready):.0f} ms, "
                    f"max {max(ready):.0f} ms ({args.samples} cold contexts); "
                    f"baseline /livez load p50 {statistics.median(floor):.0f} ms"
                )
                context = await browser.new_context()
                await context.add_init_script(
                    f"sessionStorage.setItem('cloud-engine.token', {running.admin!r});"
                )
                page = await context.new_page()
                await page.goto(f"{base}/ui/#/events")
                await page.wait_for_selector("#live-state.on")
                ui, bus = await live_latency(running, page, bootstrap, zone, args.events)
                print(
                    "live event, commit to drawn in the console:"
                    f" p50 {statistics.median(ui):.0f} ms, p99 {percentile(ui, 0.99):.0f} ms,"
                    f" max {max(ui):.0f} ms ({len(ui)} events); baseline plain aiokafka"
                    f" consumer p50 {statistics.median(bus):.0f} ms,"
                    f" p99 {percentile(bus, 0.99):.0f} ms"
                )
                if args.screenshots:
                    vm = (await running.get("/v1/vms?limit=1")).json()["items"][0]["id"]
                    await screenshots(page, base, Path(args.screenshots), vm)
                await context.close()
            finally:
                await browser.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_api.set()
        await api_task
        service.close()
        store.close()
    print(
        f"first_page_p50_ms={statistics.median(ready):.0f} first_page_max_ms={max(ready):.0f}"
        f" live_p50_ms={statistics.median(ui):.0f} live_p99_ms={percentile(ui, 0.99):.0f}"
        f" baseline_bus_p99_ms={percentile(bus, 0.99):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--screenshots", help="save the main pages' PNGs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        broker = DevBroker()
        bootstrap = broker.start()
        try:
            asyncio.run(run(args, Path(tmp), bootstrap, pg))
        finally:
            broker.stop()
            pg.stop()


if __name__ == "__main__":
    main()
