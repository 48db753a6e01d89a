"""Hypervisor's retry and reconnect on the real libvirtd."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import libvirt
import pytest
from hypervisor_race import Flaky

from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError

pytestmark = pytest.mark.libvirt

ROOT = Path(__file__).resolve().parents[3]


def test_a_transient_error_is_retried_on_a_new_connection(libvirt_uri: str) -> None:
    hv = Flaky(libvirt_uri, base_delay=0.001)
    missing = f"ce-hv-{uuid.uuid4().hex[:8]}"
    used: list[libvirt.virConnect] = []

    def once_missing(conn: libvirt.virConnect) -> str:
        used.append(conn)
        if len(used) == 1:
            conn.lookupByName(missing)
        return str(conn.getHostname())

    assert hv.call("hostname", once_missing)
    assert len(used) == 2
    assert used[0] is not used[1]
    # Let go of, not closed: another thread may still be calling on it.
    assert used[0].isAlive()


def lookup_missing(hv: Hypervisor) -> tuple[HypervisorError, int]:
    """The error of looking up a domain that is not there, and how many
    times the call was tried."""
    tries: list[int] = []

    def missing(conn: libvirt.virConnect) -> None:
        tries.append(1)
        conn.lookupByName(f"ce-hv-{uuid.uuid4().hex[:8]}")

    with pytest.raises(HypervisorError) as raised:
        hv.call("lookup", missing)
    return raised.value, len(tries)


def test_a_lasting_transient_error_is_raised_after_the_attempts(libvirt_uri: str) -> None:
    error, tries = lookup_missing(Flaky(libvirt_uri, attempts=3, base_delay=0.001))
    assert tries == 3
    assert error.code == libvirt.VIR_ERR_RPC
    assert error.action == "lookup"


def test_a_lasting_error_is_raised_at_once_with_libvirts_code(libvirt_uri: str) -> None:
    error, tries = lookup_missing(Hypervisor(libvirt_uri, base_delay=0.001))
    assert tries == 1
    assert error.code == libvirt.VIR_ERR_NO_DOMAIN
    assert not error.transient


def test_reconnecting_never_pulls_the_connection_from_under_other_threads(
    libvirt_uri: str,
) -> None:
    # It used to close the shared connection: the process died of SIGSEGV.
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("hypervisor_race.py")), libvirt_uri],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    fields = dict(kv.split("=") for kv in done.stdout.splitlines()[0].split())
    assert int(fields["errors"]) == 0, done.stdout
    assert int(fields["calls"]) > 0
    # The failures did make it reconnect while the others kept calling on
    # the connection it let go of.
    assert int(fields["opened"]) > 1
    assert int(fields["overlapped"]) > 0
