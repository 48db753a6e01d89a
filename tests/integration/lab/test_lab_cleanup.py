"""`lab down` leaves nothing; a lab whose processes were killed is cleaned by
the next `lab up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import libvirt
import msgspec
import pytest

from cloud_engine.lab import Lab
from cloud_engine.lab.model import LabState, Layout
from cloud_engine.lab.system import list_netns
from tests.integration.lab.lab_helpers import domain_name, domain_xml, leftovers, names, qemu_pids

pytestmark = pytest.mark.libvirt


def _start_domain(uri: str) -> str:
    name = domain_name()
    conn = libvirt.open(uri)
    try:
        conn.defineXML(domain_xml(name)).create()
    finally:
        conn.close()
    return name


def _recorded(lab: Lab) -> LabState:
    return msgspec.json.decode((lab.state_dir / "lab.json").read_bytes(), type=LabState)


def test_down_leaves_nothing(own_lab: Lab):
    hosts = own_lab.up(2)
    name = _start_domain(hosts[0].uri)
    assert qemu_pids(name)
    assert leftovers(own_lab.state_dir) != []

    own_lab.down()

    assert leftovers(own_lab.state_dir) == []
    assert qemu_pids(name) == []
    assert all(s.power == "off" for s in own_lab.status())
    # And it comes back.
    again = own_lab.up(2)
    assert names(again[0].uri) == {name}  # its disk kept the definition
    own_lab.down()
    assert leftovers(own_lab.state_dir) == []


def test_supervisors_killed_then_up_cleans_and_starts_afresh(own_lab: Lab):
    hosts = own_lab.up(2)
    name = _start_domain(hosts[1].uri)
    assert len(qemu_pids(name)) == 1
    before = _recorded(own_lab)

    for record in before.hosts:
        os.kill(record.supervisor_pid, signal.SIGKILL)

    # The kernel takes each host down with its supervisor: its pid 1 dies
    # (PR_SET_PDEATHSIG), and with it everything in its pid namespace.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (qemu_pids(name) or _alive(before)):
        time.sleep(0.05)
    assert qemu_pids(name) == []
    assert not _alive(before)
    layout = Layout(own_lab.state_dir)
    assert layout.netns("h1") in list_netns()  # left behind, with the switch

    again = own_lab.up(2)

    assert [h.pid for h in again] != [h.pid for h in hosts]
    assert all(s.answering for s in own_lab.status())
    ours = sorted(ns for ns in list_netns() if ns.startswith(layout.netns_prefix))
    assert ours == sorted([layout.netns("h1"), layout.netns("h2"), layout.switch_netns])
    own_lab.down()
    assert leftovers(own_lab.state_dir) == []


def test_lab_up_killed_midway_is_finished_by_the_next_up(own_lab: Lab):
    argv = [sys.executable, "-m", "cloud_engine.runner.cli", "lab", "up", "--hosts", "2"]
    proc = subprocess.Popen([*argv, "--state-dir", str(own_lab.state_dir)])
    state_file = own_lab.state_dir / "lab.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if state_file.exists() and any(h.power == "on" for h in _recorded(own_lab).hosts):
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()

    hosts = own_lab.up(2)

    assert [h.name for h in hosts] == ["h1", "h2"]
    assert all(s.answering for s in own_lab.status())
    own_lab.down()
    assert leftovers(own_lab.state_dir) == []


def _alive(state: LabState) -> bool:
    pids = [p for h in state.hosts for p in (h.supervisor_pid, h.init_pid)]
    return any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
