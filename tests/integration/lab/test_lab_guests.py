"""Real guests on the lab: VMs of the tiny-linux template boot Linux
(under TCG), and what a tenant notices holds.

One scenario, one set of booted guests (booting is the slow part): a and b
in one isolated (VXLAN) network on two hosts, c in another isolated network
on a's host. Each guest reports (on its own page, served from inside it)
exactly the address the engine allocated to its NIC; a's user data (a
script) and SSH key came with its NoCloud seed and were applied at first
boot; b's console, through the API and `cloud-engine console`, takes a
typed command for its owner and refuses another account; a reaches b (a ping
typed on a's serial console); c reaches neither. A stop ends with the
guest powering itself off on the ACPI power button (libvirt records the
shutoff reason "shutdown", not "destroyed", and the console shows the
guest's own power-off line)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import subprocess
import sys
import time
import uuid

import libvirt
import pytest

from cloud_engine.api import tokens
from cloud_engine.api.app import create_app
from cloud_engine.api.server import ApiServer
from cloud_engine.effectors.compute.console import SerialConsole
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.virtual.network import Network
from cloud_engine.infra.pg import connect
from cloud_engine.lab import LabHost
from tests.integration.lab.lab_cloud import NAMES, Cloud, dhcp_known, lab_cloud, nic_mac

# Three guests booting under TCG on a shared machine: above the default 240 s.
pytestmark = [pytest.mark.postgres, pytest.mark.libvirt, pytest.mark.timeout(600)]


def ed25519_key(comment: str) -> str:
    """An OpenSSH public key line (made up: only its form matters)."""
    kind = b"ssh-ed25519"
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


USER_DATA = base64.b64encode(
    b"#!/bin/sh\nhostname from-user-data 2>&1\necho written by user data $(hostname) > /etc/motd\n"
).decode()
KEY = ed25519_key("tester@lab")

# Booting under TCG on a machine shared with other work: generous, and
# only a bound on waiting (figures are bench/guests.py's).
BOOT_S = 240.0


def page(lab_host: LabHost, address: str) -> str | None:
    """The guest's page, fetched from the host's namespace (its bridge has
    the network's gateway address); None while it does not answer."""
    done = subprocess.run(
        ["ip", "netns", "exec", lab_host.netns, "curl", "-s", "-m", "3", f"http://{address}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 and "hostname:" in done.stdout else None


async def wait_page(
    lab_host: LabHost, vm: uuid.UUID, address: str, shows: str = "hostname:"
) -> str:
    """The guest's page once it shows `shows`. (The page is a CGI script
    that reads the hostname first and the user data's status last: a page
    made while the user data runs can show both the old hostname and the
    script's outcome, so wait for what is asked for.)"""
    deadline = time.monotonic() + BOOT_S

    async def fetch() -> str | None:
        found = await asyncio.to_thread(page, lab_host, address)
        return found if found is not None and shows in found else None

    while (found := await fetch()) is None:
        if time.monotonic() > deadline:
            with SerialConsole(lab_host.uri, vm) as console:
                _, seen = shell(console, "ip -o addr; ip route; cat /run/tiny/lease.*")
            raise AssertionError(f"no page from {address} on {lab_host.name}; guest: {seen}")
        await asyncio.sleep(1.0)
    return found


def reported(found: str) -> list[str]:
    """The addresses the guest's page lists ("address: eth0 10.60.0.5/24")."""
    return re.findall(r"^address: \S+ (\S+)/\d+$", found, re.MULTILINE)


def shell(console: SerialConsole, command: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """Type a command at the guest's root shell: its exit status and what
    the console showed."""
    marker = uuid.uuid4().hex[:8]
    console.read(0.2)  # what was there before
    # Quoted apart so the echo of the typed line does not match.
    console.write(f"{command}; echo done-{marker[:4]}''{marker[4:]}-$?\n".encode())
    seen = ""
    deadline = time.monotonic() + timeout_s
    while not (end := re.search(f"done-{marker}-(\\d+)\r?\n", seen)):
        assert time.monotonic() < deadline, f"{command!r} did not finish: {seen[-500:]!r}"
        seen += console.read(1.0).decode(errors="replace")
    return int(end.group(1)), seen


def ping(console: SerialConsole, address: str) -> bool:
    return shell(console, f"ping -c 3 -W 2 {address} >/dev/null 2>&1")[0] == 0


async def console_client(
    cloud: Cloud, vm: uuid.UUID, account: str, typed: str
) -> tuple[int, str, str]:
    """`cloud-engine console VM` against an API on the test's log, as a
    user of account, with typed on its stdin: exit status, stdout, stderr."""
    server = ApiServer(
        create_app(cloud.service, cloud.store, cloud.pipeline.target), "127.0.0.1", 0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        conn = await connect(cloud.pipeline.target)
        try:
            token, _ = await tokens.create(conn, cloud.pipeline.target.schema, "user", account)
        finally:
            await conn.close()
        env = {**os.environ, "CLOUD_ENGINE_URL": server.url, "CLOUD_ENGINE_TOKEN": token}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cloud_engine.runner.cli", "console", str(vm), "--linger", "20"],
            input=typed,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return done.returncode, done.stdout, done.stderr
    finally:
        stop.set()
        await task


async def test_guests_get_the_engines_addresses_reach_their_network_only_and_stop_by_acpi(
    pg_target, service, store, broker, topic_prefix, hosts: list[LabHost], tmp_path
):
    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path, guest=True
    ) as cloud:
        await _scenario(cloud, hosts)


async def _scenario(cloud: Cloud, hosts: list[LabHost]) -> None:
    h1, h2, _ = hosts
    first = cloud.store.load(cloud.fabric.network)
    assert isinstance(first, Network)
    other = (
        await cloud.service.execute_async(
            CreateNetwork(
                account="acme",
                name="other",
                zone_id=cloud.fabric.zone,
                cidr="10.61.0.0/24",
                isolation="VXLAN",
                physical_network_id=first.physical_network_id,
            )
        )
    ).aggregate_id
    a, b, c = await asyncio.gather(
        cloud.deploy("a", host_id=cloud.fabric.host_of(h1), user_data=USER_DATA, ssh_keys=(KEY,)),
        cloud.deploy("b", host_id=cloud.fabric.host_of(h2)),
        cloud.deploy("c", host_id=cloud.fabric.host_of(h1), network_ids=(other,)),
    )
    where = {a: h1, b: h2, c: h1}
    (address_a,), (address_b,), (address_c,) = map(cloud.addresses, (a, b, c))
    assert address_a.startswith("10.60.0.") and address_b.startswith("10.60.0.")
    assert address_c.startswith("10.61.0.")

    # Each guest took by DHCP exactly the address the engine allocated.
    for vm, address in ((a, address_a), (b, address_b), (c, address_c)):
        shows = "user-data: exit 0" if vm == a else "hostname:"
        found = await wait_page(where[vm], vm, address, shows)
        assert reported(found) == [address], found
        if vm == a:
            # Its user data's script ran at first boot and set the hostname
            # (after the seed's, the VM's name); a page made after it ends
            # shows that hostname.
            found = await wait_page(where[vm], vm, address, "hostname: from-user-data")
            assert "written by user data from-user-data" in found, found
        else:
            assert "user-data: none" in found, found
    # Only the VM's own host's DHCP knows it: one server can answer it.
    network = NAMES.network(cloud.fabric.network)
    assert dhcp_known(h1, network) == {nic_mac(h1, a): address_a}
    assert dhcp_known(h2, network) == {nic_mac(h2, b): address_b}

    with SerialConsole(h1.uri, a) as console_a, SerialConsole(h1.uri, c) as console_c:
        # The keys of the seed, where sshd would read them.
        status, shown = await asyncio.to_thread(shell, console_a, "cat /root/.ssh/authorized_keys")
        assert status == 0 and KEY in shown, shown
        # a reaches b across hosts (VXLAN); c, on a's own host, neither.
        assert await asyncio.to_thread(ping, console_a, address_b)
        assert not await asyncio.to_thread(ping, console_c, address_a)
        assert not await asyncio.to_thread(ping, console_c, address_b)

        # b's console through the API, with `cloud-engine console`: its
        # owner types a command and reads the output (the kernel's boot
        # messages among it); another account is refused.
        typed = "dmesg | grep -m1 'Linux version'; echo typed-$((6*7))\n"
        code, out, err = await console_client(cloud, b, "acme", typed)
        assert code == 0 and "typed-42" in out and "Linux version" in out, (out, err)
        code, out, err = await console_client(cloud, b, "intruder", typed)
        assert code == 1 and "4404" in err and "typed-42" not in out, (out, err)

        # Graceful stop: the guest's acpid powers it off.
        assert await cloud.operate("vm.stop", a) == ("succeeded", "")
        said = await asyncio.to_thread(console_a.expect, "ACPI power button: powering off", 10.0)
        assert "powering off" in said
    conn = libvirt.open(h1.uri)
    try:
        state, reason = conn.lookupByUUIDString(str(a)).state()
    finally:
        conn.close()
    assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    assert cloud.vm(a).state == "Stopped"
