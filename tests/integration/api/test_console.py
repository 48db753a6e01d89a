"""The web console in a real headless browser (Debian's chromium driven by
Playwright), against the real API with its live stream on the dev broker, on
real PostgreSQL, with the whole pipeline in-process (relay, projections,
operation manager, recorder, an effector on libvirt's test driver).

Also, without a browser: what the live stream lets each token see."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_harness import Api, deploy_spec, pipeline_tasks, start_api, until

from cloud_engine.api.live import LiveConfig
from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from tests import fabric

pytestmark = pytest.mark.postgres

CHROMIUM = "/usr/bin/chromium"
# The system browser, nothing downloaded, nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000


@pytest.fixture
async def live_api(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    broker: str,
    topic_prefix: str,
) -> AsyncIterator[Api]:
    running, stop, task = await start_api(
        pg_target, service, store, live=LiveConfig(broker, topic_prefix)
    )
    try:
        yield running
    finally:
        stop.set()
        await task


@pytest.fixture
async def pipeline(
    live_api: Api, broker: str, topic_prefix: str
) -> AsyncIterator[list[asyncio.Task[None]]]:
    async with pipeline_tasks(live_api, broker, topic_prefix, "ui") as tasks:
        yield tasks


def browser_available() -> None:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing (apt-get install chromium; ./dev test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def test_log_in_deploy_see_running_live_open_history(
    live_api: Api,
    pipeline: list[asyncio.Task[None]],
    template_url: tuple[str, str],
    tmp_path: Path,
) -> None:
    browser_available()
    from playwright.async_api import async_playwright, expect

    api = live_api
    url, sha256 = template_url
    spec = deploy_spec(url, sha256, tmp_path)
    await fabric.build_http(api, spec, admin=api.admin)

    async def template_ready() -> bool:
        made = (await api.get("/v1/templates?state=Ready", token=api.alice)).json()
        return bool(made["items"])

    await until("template Ready", pipeline, template_ready)

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            page = await context.new_page()
            expect.set_options(timeout=WAIT_MS)
            await page.goto(f"http://127.0.0.1:{api.port}/ui/")
            # Log in as the tenant: a label names the field, Enter submits.
            await page.get_by_label("API token").fill(api.alice)
            await page.get_by_label("API token").press("Enter")
            await expect(page.get_by_role("heading", name="Virtual machines")).to_be_focused()
            await expect(page.get_by_role("link", name="Fabric")).to_be_hidden()
            await expect(page.locator("#live-state")).to_have_text("live")
            # The page is never reloaded: a marker on window would not survive.
            await page.evaluate("window.__sameDocument = true")

            await page.get_by_role("button", name="Deploy a VM…").click()
            await page.get_by_label("Name").fill("web")
            await page.get_by_label("RAM (MiB)").fill("128")
            # No NIC: libvirt's test driver refuses the flags the network
            # driver observes networks with (as in test_api_e2e).
            await page.get_by_role("button", name="Deploy", exact=True).click()

            row = page.locator("tr", has=page.get_by_role("link", name="web", exact=True))
            await expect(row.locator("[data-state]")).to_have_text("Running")
            assert await page.evaluate("window.__sameDocument") is True
            vm = (await api.get("/v1/vms?name=web", token=api.alice)).json()["items"][0]
            assert vm["state"] == "Running"

            await page.get_by_role("link", name="History of web").click()
            await expect(page.get_by_role("heading", name="History of vm web")).to_be_visible()
            history = page.get_by_role("table", name="Events, oldest first: who, when, why")
            await expect(history.locator("tr[data-version='1'] td").nth(1)).to_have_text("created")
            names = await history.locator("tbody tr").evaluate_all(
                "rows => rows.map(r => r.cells[2].textContent)"
            )
            assert names[0] == "created" and "started" in names, names
            assert len(names) == vm["version"], names
            actor = await history.locator("tr[data-version='1'] td").nth(2).inner_text()
            assert actor.startswith("api:alice:")
            # The state at version 1, rebuilt from the log.
            await page.get_by_role("spinbutton", name="Version").fill("1")
            await page.get_by_role("button", name="Show").click()
            state = page.get_by_label("State then")
            await expect(state).to_have_text(re.compile(r"^version 1,"))
            shown = await state.inner_text()
            assert json.loads(shown.split("\n", 1)[1])["state"] == "Allocated"
        finally:
            await context.close()


async def _read_stream(api: Api, token: str, into: list[dict[str, Any]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            f"GET /v1/stream HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                into.append(json.loads(line[6:]))
    finally:
        writer.close()


async def test_stream_shows_each_token_only_what_it_may_see(
    live_api: Api, broker: str, topic_prefix: str
) -> None:
    api = live_api
    target = api.target
    stop = asyncio.Event()
    relay = asyncio.create_task(
        Relay(target, RelayConfig(bootstrap=broker, topic_prefix=topic_prefix)).run(stop)
    )
    seen: dict[str, list[dict[str, Any]]] = {"admin": [], "alice": [], "bob": []}
    readers = [asyncio.create_task(_read_stream(api, getattr(api, who), seen[who])) for who in seen]
    try:
        # The consumer starts at the end of the topics: wait until an event
        # published now reaches the admin's stream, then write the ones that count.
        zone = None
        for attempt in range(100):
            reply = await api.post("/v1/zones", {"name": f"probe-{attempt}"})
            zone = reply.json()["resource_id"]
            for _ in range(20):
                if any(e["aggregate_id"] == zone for e in seen["admin"]):
                    break
                await asyncio.sleep(0.1)
            else:
                continue
            break
        else:
            raise AssertionError("the admin's stream never showed an event")
        volume = await api.post(
            "/v1/volumes", {"name": "a-vol", "zone_id": zone, "size_gb": 1}, token=api.alice
        )
        assert volume.status == 202, volume.body
        alice_volume = volume.json()["resource_id"]
        other = await api.post(
            "/v1/volumes", {"name": "b-vol", "zone_id": zone, "size_gb": 1}, token=api.bob
        )
        bob_volume = other.json()["resource_id"]
        # The last event written: once the admin has it, the others have theirs.
        last = await api.post("/v1/zones", {"name": "last"})
        last_zone = last.json()["resource_id"]
        for _ in range(300):
            if any(e["aggregate_id"] == last_zone for e in seen["admin"]):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        subjects = {who: {e["aggregate_id"] for e in events} for who, events in seen.items()}
        assert {alice_volume, bob_volume, last_zone} <= subjects["admin"]
        assert alice_volume in subjects["alice"] and bob_volume not in subjects["alice"]
        assert bob_volume in subjects["bob"] and alice_volume not in subjects["bob"]
        # Fabric and catalog events are for admins.
        assert last_zone not in subjects["alice"] | subjects["bob"]
        event = next(e for e in seen["alice"] if e["aggregate_id"] == alice_volume)
        assert event["type"] == "io.cloudengine.volume.created.v1"
        assert event["version"] == 1 and event["position"] > 0
        assert event["data"]["name"] == "a-vol"
    finally:
        stop.set()
        # Stopping the API ends every stream (the readers return).
        for task in readers:
            task.cancel()
        await asyncio.gather(relay, *readers, return_exceptions=True)


async def test_stream_needs_a_token_and_a_broker(api: Api) -> None:
    reply = await api.get("/v1/stream", token="ce_nope")
    assert reply.status == 401
    reply = await api.call("GET", "/v1/stream", token=api.alice)
    assert reply.status == 503
    assert reply.json()["type"] == "urn:cloudengine:problem:no-event-stream"


async def test_console_is_static_files_with_a_strict_policy(api: Api) -> None:
    page = await api.call("GET", "/ui/")
    assert page.status == 200
    assert "text/html" in page.content_type
    assert b'<script type="module" src="app.js">' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = await api.call("GET", "/ui/app.js")
    assert script.status == 200 and "javascript" in script.content_type
    again = await api.call("GET", "/ui/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status == 304 and again.body == b""
    for missing in ("/ui/nope.js", "/ui/../pyproject.toml", "/ui/ui.py"):
        reply = await api.call("GET", missing)
        assert reply.status == 404, missing
        assert reply.content_type == "application/problem+json"
    bare = await api.call("GET", "/ui")
    assert bare.status in (307, 308) and bare.headers["location"].endswith("/ui/")
