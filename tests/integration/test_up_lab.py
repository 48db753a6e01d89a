"""`cloud-engine up` on lab hosts, as a user runs it: the README's VM is a
real QEMU process inside the lab host the engine chose; Ctrl-C leaves no lab
process, namespace or QEMU behind; the next `up` brings the same hosts back
and the record agrees with what runs (the VM was recorded Stopped, through
the engine). And where lab hosts are not wanted or cannot run, `up` keeps
libvirt's test driver and says why in one line."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from cloud_engine.lab import Lab, LabError
from cloud_engine.runner.up_hosts import kvm_unavailable
from tests.integration.lab.lab_helpers import leftovers, pids_with
from tests.integration.test_cli import (  # stop_leftovers: autouse, stops any up left
    Running,
    _env,
    http,
    stop_leftovers,  # noqa: F401
    until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short path: the lab's libvirt sockets live under it (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ce-up-", dir="/tmp"))
    try:
        yield path
    finally:
        # Only if a test failed half-way: up takes its lab down itself.
        with contextlib.suppress(LabError):
            Lab(path / "lab").down(wipe=True)
        shutil.rmtree(path, ignore_errors=True)


# The README's user data: a script the guest runs at boot; its page shows the hostname.
USER_DATA = b"#!/bin/sh\nhostname set-by-user-data\n"


def _deploy(up: Running, name: str, **extra: object) -> dict:
    """The README's deploy, over HTTP: the VM once its operation succeeded."""
    api, token = up.value("API"), up.value("admin token")
    template = up.fabric_id("Template")
    until(
        "the demo template fetched by the effector",
        lambda: http("GET", f"{api}/v1/templates/{template}", token)[1].get("state") == "Ready",
    )
    status, accepted = http(
        "POST",
        f"{api}/v1/vms",
        token,
        {
            "account": "demo",
            "name": name,
            "zone_id": up.fabric_id("Zone"),
            "template_id": template,
            "spec": {"cpus": 1, "ram_mb": 512, "root_disk_gb": 1},
            "network_ids": [up.fabric_id("Network")],
            **extra,
        },
    )
    assert status == 202, accepted
    _finished(up, accepted["operation_id"])
    vm = http("GET", f"{api}/v1/vms/{accepted['resource_id']}", token)[1]
    assert vm["state"] == "Running", vm
    return vm


def _page(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def _public_ip_path(up: Running, vm: dict) -> None:
    """The README's public IP path: a public IP of the demo account's, port
    8080 of it forwarded to the VM's port 80, the page fetched from this
    machine (the root namespace holds the lab's public network's gateway)."""
    api, token = up.value("API"), up.value("admin token")
    public = _named(up, "Network")["public"]
    status, ip = http(
        "POST", f"{api}/v1/ip-addresses", token, {"network_id": public, "account": "demo"}
    )
    assert status == 202, ip
    status, rule = http(
        "POST",
        f"{api}/v1/network-rules",
        token,
        {
            "network_id": up.fabric_id("Network"),
            "kind": "port_forwarding",
            "protocol": "tcp",
            "start_port": 8080,
            "public_ip_address_id": ip["resource_id"],
            "private_ip": vm["attributes"]["nics"][0]["address"],
            "private_port": 80,
        },
    )
    assert status == 202, rule
    until(
        "the rule Active",
        lambda: _get(up, f"/v1/network-rules/{rule['resource_id']}")["state"] == "Active",
    )
    # The guest boots under TCG and runs its user data: its page, through the router.
    page = until(
        "the guest's page through the public IP",
        lambda: "set-by-user-data" in (p := _page(f"http://{ip['value']}:8080/")) and p,
        timeout=180,
    )
    assert "hostname: set-by-user-data" in page, page


def _finished(up: Running, operation_id: str) -> None:
    api, token = up.value("API"), up.value("admin token")
    url = f"{api}/v1/operations/{operation_id}"
    done = until(
        "the operation",
        lambda: (
            (op := http("GET", url, token)[1]).get("state")
            in ("succeeded", "failed", "compensated")
            and op
        ),
    )
    assert done["state"] == "succeeded", done


def _get(up: Running, path: str) -> dict:
    status, body = http("GET", f"{up.value('API')}{path}", up.value("admin token"))
    assert status == 200, body
    return body


def _hosts(up: Running) -> dict[str, str]:
    """The demo hosts' names and ids as `up` printed them."""
    return _named(up, "Host")


def _named(up: Running, kind: str) -> dict[str, str]:
    return {x.split()[1]: x.split()[2] for x in up.lines if x.split()[:1] == [kind]}


def _qemu(vm_id: str) -> list[int]:
    """QEMU processes of a VM (libvirt passes the domain's UUID, the VM id)."""
    return [p for p in pids_with(f"-uuid {vm_id} ") if "qemu-system" in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _domain_active(uri: str, vm_id: str) -> bool:
    conn = libvirt.open(uri)
    try:
        return bool(conn.lookupByUUIDString(vm_id).isActive())
    finally:
        conn.close()


def _ctrl_c(up: Running) -> tuple[int, str]:
    up.process.send_signal(signal.SIGINT)
    out, _ = up.process.communicate(timeout=60)
    up.lines += out.splitlines()
    up.log.close()
    return up.process.returncode, up.log_path.read_text()


def _nothing_left(data_dir: Path, vm_id: str) -> None:
    assert leftovers(data_dir / "lab") == []
    assert _qemu(vm_id) == []
    # PostgreSQL, its watchdog, the broker: every process naming the data
    # directory ends with up (the watchdog a moment after).
    until("no process of the data directory", lambda: not pids_with(str(data_dir)), timeout=20)


def test_up_on_lab_hosts_runs_real_qemu_and_the_record_agrees_after_ctrl_c(data_dir: Path):
    first = Running(data_dir, CLOUD_ENGINE_UP_HYPERVISOR="lab")
    lab = Lab(data_dir / "lab")
    kvm = kvm_unavailable(lab.host("h1").uri) is None
    try:
        hosts = _hosts(first)
        assert sorted(hosts) == ["h1", "h2", "h3"], first.lines
        line = next(x for x in first.lines if x.startswith("lab hosts: "))
        assert line.startswith(f"lab hosts: h1 h2 h3 ({'KVM' if kvm else 'QEMU TCG'}"), line
        pools = _named(first, "StoragePool")
        assert sorted(pools) == ["local-h1", "local-h2", "local-h3", "primary-1"]
        shared = _get(first, f"/v1/storage-pools/{pools['primary-1']}")["attributes"]
        assert (shared["url"], shared["scope"]) == (f"file://{data_dir}/lab/shared", "cluster")
        for name, host_id in hosts.items():
            host = _get(first, f"/v1/hosts/{host_id}")["attributes"]
            assert host["libvirt_uri"] == lab.host(name).uri, host
            assert host["underlay_address"] == lab.host(name).address, host
            local = _get(first, f"/v1/storage-pools/{pools[f'local-{name}']}")["attributes"]
            assert local["url"] == f"file://{lab.host(name).local_pool_path}", local
            assert (local["scope"], local["host_id"]) == ("host", host_id), local

        networks = _named(first, "Network")
        assert sorted(networks) == ["demo-net", "public"], first.lines
        user_data = base64.b64encode(USER_DATA).decode()
        vm = _deploy(first, "web-1", user_data=user_data)
        _public_ip_path(first, vm)
        host = next(n for n, i in hosts.items() if i == vm["attributes"]["host_id"])
        assert _domain_active(lab.host(host).uri, vm["id"])
        # One QEMU, inside the chosen host (its pid namespace), not the machine's.
        (qemu,) = _qemu(vm["id"])
        assert _pid_namespace(qemu) == _pid_namespace(lab.host(host).pid)
        assert ("-accel kvm" if kvm else "-accel tcg") in _cmdline(qemu)
        # The disk is in the shared pool, which every host sees.
        assert f"{data_dir}/lab/shared/" in _cmdline(qemu)
    finally:
        code, logs = _ctrl_c(first)
    assert code == 0, logs
    assert first.lines[-1] == "stopped"
    assert "Traceback" not in logs
    assert "lab stopped" in logs
    _nothing_left(data_dir, vm["id"])

    second = Running(data_dir, CLOUD_ENGINE_UP_HYPERVISOR="")  # auto: the lab again
    try:
        # The same hosts (names, ids, URIs), networks and lab state directory.
        assert _hosts(second) == hosts
        assert _named(second, "Network") == networks
        assert (
            lab.host(host).uri
            == _get(second, f"/v1/hosts/{hosts[host]}")["attributes"]["libvirt_uri"]
        )
        # Nothing runs the VM, and the record says so: up stopped it
        # through the engine before "ready".
        again = _get(second, f"/v1/vms/{vm['id']}")
        assert again["state"] == "Stopped", again
        assert _qemu(vm["id"]) == []
        assert not _domain_active(lab.host(host).uri, vm["id"])  # defined, shut off
        assert "recorded stopped the VMs that no longer ran" in second.logs
        assert "web-1" in second.logs
        # And it starts again on its host's libvirtd.
        status, started = http(
            "POST",
            f"{second.value('API')}/v1/vms/{vm['id']}/start",
            second.value("admin token"),
            {},
        )
        assert status == 202, started
        _finished(second, started["operation_id"])
        now = _get(second, f"/v1/vms/{vm['id']}")
        assert now["state"] == "Running", now
        runs_on = next(n for n, i in hosts.items() if i == now["attributes"]["host_id"])
        (qemu,) = _qemu(vm["id"])
        assert _pid_namespace(qemu) == _pid_namespace(lab.host(runs_on).pid)
        # The README's stop (graceful: an ACPI shutdown, forced after 30 s).
        status, stopped = http(
            "POST",
            f"{second.value('API')}/v1/vms/{vm['id']}/stop",
            second.value("admin token"),
            {},
        )
        assert status == 202, stopped
        _finished(second, stopped["operation_id"])
        assert _get(second, f"/v1/vms/{vm['id']}")["state"] == "Stopped"
        assert _qemu(vm["id"]) == []
    finally:
        code, logs = _ctrl_c(second)
    assert code == 0, logs
    _nothing_left(data_dir, vm["id"])


def test_a_killed_up_leaves_its_lab_running_and_the_next_up_keeps_it(data_dir: Path):
    """As hypervisors outlive a management server that crashes: the VM runs
    on, the next `up` adopts the hosts and leaves the VM Running."""
    first = Running(data_dir, CLOUD_ENGINE_UP_HYPERVISOR="lab")
    try:
        vm = _deploy(first, "web-1")
        (qemu,) = _qemu(vm["id"])
    finally:
        first.process.kill()
        first.process.wait(10)
        first.log.close()
    postgres = pids_with(f"{data_dir}/pgdata")
    until("the killed up's PostgreSQL gone", lambda: not pids_with(f"{data_dir}/pgdata"), 20)
    assert postgres, "PostgreSQL ran"
    assert _qemu(vm["id"]) == [qemu]

    second = Running(data_dir, CLOUD_ENGINE_UP_HYPERVISOR="lab")
    try:
        assert _get(second, f"/v1/vms/{vm['id']}")["state"] == "Running"
        assert _qemu(vm["id"]) == [qemu]  # the same process: nothing restarted
        assert "recorded stopped" not in second.logs
    finally:
        code, logs = _ctrl_c(second)
    assert code == 0, logs
    _nothing_left(data_dir, vm["id"])


def test_the_test_driver_when_asked_and_a_data_directory_keeps_its_kind(tmp_path: Path):
    # Forced: up as it always was (two hosts on libvirt's test driver).
    first = Running(tmp_path, CLOUD_ENGINE_UP_HYPERVISOR="test")
    try:
        assert sorted(_hosts(first)) == ["host-1", "host-2"]
        assert not any(x.startswith("lab hosts: ") for x in first.lines)
        # Left Running when up stops: the test driver forgets it.
        vm = _deploy(first, "web-1")
    finally:
        code, logs = first.stop()
    assert code == 0, logs
    assert not (tmp_path / "lab").exists()

    # auto on a data directory of test-driver hosts: kept, said in one line.
    second = Running(tmp_path, CLOUD_ENGINE_UP_HYPERVISOR="")
    try:
        assert sorted(_hosts(second)) == ["host-1", "host-2"]
        lines = [x for x in second.logs.splitlines() if "demo hosts on libvirt's test driver" in x]
        assert len(lines) == 1, second.logs
        assert _get(second, f"/v1/vms/{vm['id']}")["state"] == "Stopped"
    finally:
        code, logs = second.stop()
    assert code == 0, logs

    # Lab hosts would join test-driver hosts in one cluster: refused.
    refused = subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", "up", "--hypervisor", "lab"],
        env=_env(tmp_path, CLOUD_ENGINE_API_PORT="0"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("cloud-engine:")]
    assert "test driver" in line and "new data directory" in line, refused.stderr
    assert not (tmp_path / "lab").exists()


def test_where_the_lab_cannot_run_up_says_why_and_takes_the_test_driver():
    # A data directory too deep for the lab's libvirt sockets (107 bytes).
    deep = Path(tempfile.mkdtemp(prefix="ce-up-", dir="/tmp")) / ("d" * 60)
    deep.mkdir()
    try:
        asked = subprocess.run(
            [sys.executable, "-m", "cloud_engine.runner.cli", "up", "--hypervisor", "lab"],
            env=_env(deep, CLOUD_ENGINE_API_PORT="0"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert asked.returncode == 1, asked.stderr
        assert "Traceback" not in asked.stderr
        (line,) = [x for x in asked.stderr.splitlines() if x.startswith("cloud-engine:")]
        assert "the lab cannot run here" in line and "too long" in line, asked.stderr

        up = Running(deep, CLOUD_ENGINE_UP_HYPERVISOR="")  # auto
        try:
            assert sorted(_hosts(up)) == ["host-1", "host-2"]
            why = [x for x in up.logs.splitlines() if "lab hosts cannot run here" in x]
            assert len(why) == 1 and "too long" in why[0], up.logs
        finally:
            code, logs = up.stop()
        assert code == 0, logs
    finally:
        shutil.rmtree(deep.parent, ignore_errors=True)
