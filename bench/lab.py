"""Lab start-up and raw live migration between lab hosts (issue 19).

lab up, cold: a new state directory, so no QEMU capabilities seed: one host
starts and probes QEMU, then the others start from its cache. Timed from
Lab.up(3) called to every libvirtd answering. Then `down`, and `up` again
--warm times (seeded): the median is the warm figure.

Raw migration: a diskless 128 MiB domain (TCG, SeaBIOS idling: nothing to
boot) started on h1, then moved h1 -> h2 -> h1 ... --moves times with
virDomainMigrate(dest, LIVE | PERSIST_DEST | UNDEFINE_SOURCE, uri=tcp://<dest
underlay address>); each move timed around the call (it returns once the
domain runs on the destination and the source is gone). For every move the
destination's completed-job statistics give the guest's downtime and the
RAM actually sent; QEMU's own transfer time is RAM sent / its measured rate.
For scale, --starts define+create+destroy runs of the same domain on h3: a
migration starts a QEMU on the destination the same way.

Needs root and scripts/libvirt-host's packages; everything runs in a state
directory of its own under /tmp, removed at the end.

    python bench/lab.py [--moves 10] [--warm 3] [--starts 5]

Last line: lab_up_s=<cold> raw_migrate_s=<p50>
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt

from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import LabError, LabHost

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
FLAGS |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE


def domain_xml(name: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<devices><serial type='pty'/></devices></domain>"
    )


def time_up(lab: Lab) -> float:
    started = time.monotonic()
    lab.up(3)
    return time.monotonic() - started


def migrations(hosts: list[LabHost], moves: int) -> list[tuple[float, dict[str, int]]]:
    a, b = hosts[0], hosts[1]
    conns = {a.name: libvirt.open(a.uri), b.name: libvirt.open(b.uri)}
    name = f"ce-bench-{uuid.uuid4().hex[:8]}"
    conns[a.name].defineXML(domain_xml(name)).create()
    time.sleep(1.0)  # past SeaBIOS's first steps: an idle guest
    found = []
    here, there = a, b
    try:
        for _ in range(moves):
            dom = conns[here.name].lookupByName(name)
            started = time.monotonic()
            dom.migrate(conns[there.name], FLAGS, None, there.migration_uri, 0)
            took = time.monotonic() - started
            moved = conns[there.name].lookupByName(name)
            stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            found.append((took, stats))
            here, there = there, here
    finally:
        dom = conns[here.name].lookupByName(name)
        dom.destroy()
        dom.undefine()
        for conn in conns.values():
            conn.close()
    return found


def starts(host: LabHost, runs: int) -> list[float]:
    conn = libvirt.open(host.uri)
    found = []
    try:
        for _ in range(runs):
            name = f"ce-bench-{uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            dom = conn.defineXML(domain_xml(name))
            dom.create()
            found.append(time.monotonic() - started)
            dom.destroy()
            dom.undefine()
    finally:
        conn.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="celab-b", dir="/tmp"))
    lab = Lab(state_dir)
    try:
        cold = time_up(lab)
        print(f"lab up, 3 hosts, cold (probes QEMU once): {cold:.2f} s")
        warm = []
        for _ in range(args.warm):
            lab.down()
            warm.append(time_up(lab))
        print(f"lab up, 3 hosts, warm: {', '.join(f'{w:.2f}' for w in warm)} s")
        hosts = lab.up(3)
        runs = migrations(hosts, args.moves)
        times = sorted(t for t, _ in runs)
        for took, stats in runs:
            ram = stats.get("memory_processed", 0)
            rate = stats.get("memory_bps", 0)
            transfer_ms = 1000 * ram / rate if rate else 0.0
            print(
                f"  move {took:.3f} s: downtime {stats.get('downtime', 0)} ms,"
                f" RAM sent {ram / 1024:.0f} KiB in ~{transfer_ms:.0f} ms"
                f" ({stats.get('memory_constant', 0)} zero pages skipped)"
            )
        p50 = statistics.median(times)
        print(f"raw migration, {len(times)} moves: p50 {p50:.3f} s, max {times[-1]:.3f} s")
        boot = starts(hosts[2], args.starts)
        print(f"QEMU define+create on a lab host, p50 of {len(boot)}:", end=" ")
        print(f"{statistics.median(boot):.3f} s")
        print(f"lab_up_warm_s={statistics.median(warm):.2f}")
        print(f"lab_up_s={cold:.2f} raw_migrate_s={p50:.2f}")
    except LabError as e:
        print(f"bench/lab.py: {e}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(LabError):
            lab.down(wipe=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
