"""The chaos run on lab hosts (bench/chaos.py --lab), its CI version: at
least 10 faults, every kind at least once (the API, relay, projection
worker, engine, effector, automation, broker and PostgreSQL SIGKILLed, a
lab host's power cut), under an HTTP workload of idle TCG VMs with NICs on
VXLAN networks, half of them HA-enabled; then none of the checks finds a
violation: besides those of the test-driver run (tests/integration/
test_chaos.py), every lab host Up again, the domains running on every lab
host's libvirtd exactly the VMs the log records Running there, and every
VXLAN tag allocated once. Needs root and real lab hosts (the script makes
a lab of its own); there is no skip path. Seeded:
CLOUD_ENGINE_CHAOS_SEED replays a failing run."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path

import libvirt
import pytest

from cloud_engine.lab import LabHost
from cloud_engine.lab.system import require_machine
from tests.integration.chaos_run import run_chaos
from tests.integration.lab.lab_helpers import domain_name, domain_xml

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from chaos_lab import domains_differ  # a bench module: bench/ on the path

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt, pytest.mark.timeout(600)]


def test_a_short_chaos_run_on_lab_hosts_cuts_a_host_and_loses_nothing() -> None:
    require_machine()  # root and the lab's tools, or a LabError here
    seed = os.environ.get("CLOUD_ENGINE_CHAOS_SEED", "23")
    by_kind = run_chaos(
        # 10 faults, every kind first (9), about 5 s apart, under 2 clients
        # of at most 3 live VMs each.
        [
            "--lab",
            *("--faults", "10", "--every", "5", "--seconds", "100", "--grace", "120"),
            *("--clients", "2", "--lab-vms", "3", "--seed", seed),
        ],
        faults=10,
        timeout=540,
    )
    assert by_kind["lab-host"] >= 1, by_kind


def test_the_hypervisor_check_finds_a_domain_missing_extra_or_on_two_hosts(
    hosts: list[LabHost],
) -> None:
    """The run's check against real libvirtds: one idle domain started by
    hand where the log (here: a dict) says it runs, says it runs
    elsewhere, says nothing, and then on a second host too."""
    ids = {uuid.uuid4(): h for h in hosts[:2]}
    (one, h1), (two, h2) = ids.items()
    vm, name = uuid.uuid4(), domain_name()
    xml = domain_xml(name, mib=16).replace("</name>", f"</name><uuid>{vm}</uuid>")
    started = []
    try:
        for h in (h1, h2):
            conn = libvirt.open(h.uri)
            started.append(conn)
            if h is h1:
                conn.createXML(xml)

        def about_it(running: dict[uuid.UUID, uuid.UUID | None]) -> list[str]:
            return [
                line for line in domains_differ(running, ids) if name in line or str(vm) in line
            ]

        extra, missing = "domains running that the log does not run there", "no domain runs"
        assert about_it({vm: one}) == []
        found = about_it({})
        assert [line.split(":")[:2] for line in found] == [[h1.name, f" {extra}"]], found
        found = about_it({vm: two})
        assert [line.split(":")[:2] for line in found] == [
            [h1.name, f" {extra}"],
            [h2.name, " VMs recorded Running there, no domain runs"],
        ], found
        assert missing in found[1]
        started[1].createXML(xml)
        found = about_it({vm: one})
        assert found[0].split(":")[:2] == [h2.name, f" {extra}"], found
        assert found[1:] == [f"vm {vm}'s domain runs on ['{h1.name}', '{h2.name}']"], found
    finally:
        for conn in started:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()
            conn.close()
