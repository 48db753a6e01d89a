"""bench/chaos.py --lab: the chaos run on lab hosts (needs root and
scripts/libvirt-host's packages, as the lab tests do).

The hosts are a lab of 3 (a state directory of its own under /tmp, removed
at the end), registered as bench/migrate.py's fabric does (4 cores and
2 GiB each, cpu_overcommit 4, a shared cluster pool on the lab's shared
directory, a 4 MiB template with no OS: SeaBIOS idles) with a VXLAN
physical network of 100 tags and one VXLAN network. Automation fences a
Down host by cutting its power (`--lab-state`) and declares a fenced host
that answers again Up after 2 s.

The load is the test driver's (chaos_load.Client) with a lab Shape: at
most --lab-vms live VMs per client (each an idle TCG QEMU of 128 MiB and
1 vCPU), each with a NIC on the fabric's VXLAN network or on one of the
client's own VXLAN networks (its first VM gives it a tag, which it keeps:
the API has no network shutdown, so a tagged network is never destroyed),
half of them HA-enabled. Volumes and the network commands stay in the
load. VLAN is left out: libvirt refuses a VLAN tag on a Linux-bridge
network (effectors/network/driver.py), which is what the lab's hosts
have.

One more fault kind, `lab-host`: the lab host running the most domains
(a seeded draw among equals) loses its power (Lab.power_off: its libvirtd
and every QEMU die at once) and is powered on with its disk: 15 s later
at the first cut and every other one (automation has confirmed it Down
and fenced it by then: HA restarts its HA-enabled VMs elsewhere, the
others are recorded Stopped), 2-4 s later (drawn) at the others (it
answers again before or while it is confirmed Down: convergence restarts
its HA-enabled VMs and records the others Stopped, or the fence cuts it
again). A host found off that the injector did not cut (fenced) is
powered on 2 s later, as an operator would. The supervisor thread does
the powering on.

The grace also waits for every lab host to be on and Up, no operation in
the log unfinished and the hypervisors to agree with the read models;
then, besides chaos_checks' checks (the VLAN/VXLAN tags among them):
- every lab host is Up in the log;
- on every lab host's libvirtd, the domains running (or paused) are
  exactly the VMs the log records Running on that host: none missing,
  none extra, none on two hosts. An effector kill no longer resets them:
  the domains live in the lab hosts' libvirtd.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import libvirt
from chaos_checks import unsettled_vms
from chaos_load import Shape
from chaos_parts import KINDS, PROCESSES, Parts, Setting
from migrate import fabric

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands.hosts import UpdateHostOvercommit
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.operation import FINISHED, Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import read_model
from cloud_engine.lab import Lab, LabError, LabHost

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

LAB_HOSTS = 3
CUT = "lab-host"


@dataclass(frozen=True)
class LabFabric:
    zone: UUID
    template: UUID
    hosts: list[UUID]


class LabParts(Parts):
    """Parts, plus the lab's hosts: cut by the injector, powered on again
    by the supervisor."""

    kinds = (*KINDS, CUT)

    def __init__(
        self,
        pg: EmbeddedPostgres,
        broker: DevBroker,
        tmp: Path,
        fmt: dict[str, str],
        lab: Lab,
        names: list[str],
        rng: random.Random,
    ) -> None:
        automation = ("automation", "--lab-state", str(lab.state_dir), "--up-after", "2")
        super().__init__(pg, broker, tmp, fmt, {**PROCESSES, "automation": automation})
        self.lab, self.names, self.rng = lab, names, rng
        self.power_due: dict[str, float] = {}  # host name -> when to power it on
        self.cuts: list[str] = []
        self.powered_on = 0
        self._looked = 0.0

    def kill(self, kind: str) -> None:
        if kind != CUT:
            super().kill(kind)
            return
        # The host running the most domains (a seeded draw among equals):
        # a cut of an idle host shows little.
        running = {h.name: len(active_domains(h)) for h in self.lab.hosts()}
        most = max(running.values(), default=0)
        victim = self.rng.choice(sorted(n for n, c in running.items() if c == most) or self.names)
        self.lab.power_off(victim)
        self.cuts.append(victim)
        print(
            f"  {time.strftime('%H:%M:%S')} cut {victim}'s power ({most} domains running)",
            flush=True,
        )

    def restart(self, kind: str) -> None:
        if kind != CUT:
            super().restart(kind)
            return
        # Not now: watch() powers it on once due. The first cut, and every
        # other one, keeps the host off 15 s: automation confirms it Down
        # and fences it, and HA restarts its VMs elsewhere (fenced ~5 s
        # after the cut, docs/performance.md). The others only 2-4 s: it
        # answers again before, or while, it is confirmed Down.
        off = 15.0 if len(self.cuts) % 2 else self.rng.uniform(2.0, 4.0)
        self.power_due[self.cuts[-1]] = time.monotonic() + off

    def watch(self) -> None:
        super().watch()
        now = time.monotonic()
        if now < self._looked + 1.0:
            return
        self._looked = now
        on = {h.name for h in self.lab.hosts()}
        for name in self.names:
            if name in on:
                continue
            # One the injector did not cut was fenced (automation cut it).
            if now < self.power_due.setdefault(name, now + 2.0):
                continue
            try:
                self.lab.power_on(name, wipe=False)
            except LabError as error:  # tried again
                print(f"  {name} power on failed: {error}", flush=True)
                self.power_due[name] = now + 2.0
                continue
            del self.power_due[name]
            self.powered_on += 1
            print(f"  {time.strftime('%H:%M:%S')} powered {name} on", flush=True)


class LabSetting(Setting):
    kinds = LabParts.kinds

    def __init__(self, args: argparse.Namespace, rng: random.Random) -> None:
        self.rng = rng
        self.live_vms = int(args.lab_vms)
        # Short: libvirt's socket paths must fit in 107 bytes.
        self.state_dir = Path(tempfile.mkdtemp(prefix="cecl-", dir="/tmp"))
        self.lab = Lab(self.state_dir)
        self.lab_hosts: dict[UUID, LabHost] = {}
        self.made: LabParts | None = None
        self.figures = ""

    def fabric(self, service: CommandService, tmp: Path, base_url: str) -> LabFabric:
        hosts = self.lab.up(LAB_HOSTS)
        ids = fabric(service, hosts, tmp, base_url, account="chaos", tags=100)
        for h in hosts:
            service.execute(
                UpdateHostOvercommit(host_id=ids[h.name], cpu_overcommit=4.0, ram_overcommit=1.0)
            )
        self.lab_hosts = {ids[h.name]: h for h in hosts}
        self.shape = Shape(
            ram_mb=128,
            isolation="VXLAN",
            live_vms=self.live_vms,
            networks=(str(ids["network"]),),
            ha=True,
        )
        return LabFabric(zone=ids["zone"], template=ids["template"], hosts=list(self.lab_hosts))

    def parts(
        self, pg: EmbeddedPostgres, broker: DevBroker, tmp: Path, fmt: dict[str, str]
    ) -> Parts:
        names = [h.name for h in self.lab_hosts.values()]
        self.made = LabParts(pg, broker, tmp, fmt, self.lab, names, self.rng)
        return self.made

    def settled(self, target: DatabaseTarget) -> bool:
        if unsettled_vms(target):
            return False
        on = {h.name for h in self.lab.hosts()}
        if any(h.name not in on for h in self.lab_hosts.values()):
            return False
        running, liveness, unfinished = asyncio.run(read_view(target))
        if unfinished or any(liveness.get(h, "Up") != "Up" for h in self.lab_hosts):
            return False
        return not domains_differ(running, self.lab_hosts)

    def checks(self, aggregates: list[Aggregate]) -> list[str]:
        on = {h.name for h in self.lab.hosts()}
        found = [
            f"host {a.name} is {a.liveness}" + ("" if a.name in on else ", its power off")
            for a in aggregates
            if isinstance(a, Host) and (a.liveness != "Up" or a.name not in on)
        ]
        running = {
            a.id: a.host_id
            for a in aggregates
            if isinstance(a, VirtualMachine) and a.state == "Running"
        }
        found += domains_differ(running, self.lab_hosts)
        runs = [a for a in aggregates if isinstance(a, Operation) and a.kind == "host.ha"]
        ha = sum(isinstance(a, VirtualMachine) and a.ha for a in aggregates)
        ended = Counter(a.status for a in aggregates if isinstance(a, Operation))
        self.figures = (
            f"; operations {dict(ended)}; HA runs {len(runs)}"
            f" ({', '.join(sorted(a.status for a in runs))});"
            f" VMs {sum(isinstance(a, VirtualMachine) for a in aggregates)}, {ha} HA-enabled,"
            f" {len(running)} running at the end"
        )
        return found

    def report(self) -> str:
        if self.made is None:
            return ""
        return (
            f"lab: power cuts {self.made.cuts}; hosts powered on again {self.made.powered_on}"
            f" (after a cut or a fence){self.figures}"
        )

    def close(self) -> None:
        try:
            self.lab.down(wipe=True)
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


async def read_view(target: DatabaseTarget) -> tuple[dict[UUID, UUID | None], dict[UUID, str], int]:
    """As the read models have it: the Running VMs' hosts, each host's
    liveness, the operations not ended."""
    conn = await connect(target)
    try:
        vms = await conn.fetch(
            f"SELECT id, data->>'host_id' AS host FROM {read_model(target.schema, 'vm')}"
            " WHERE state = 'Running'"
        )
        hosts = await conn.fetch(
            f"SELECT id, data->>'liveness' AS liveness FROM {read_model(target.schema, 'host')}"
        )
        unfinished = await conn.fetchval(
            f"SELECT count(*) FROM {read_model(target.schema, 'operation')}"
            " WHERE NOT (state = ANY($1::text[]))",
            sorted(FINISHED),
        )
    finally:
        await conn.close()
    running = {r["id"]: UUID(r["host"]) if r["host"] else None for r in vms}
    return running, {r["id"]: r["liveness"] or "Up" for r in hosts}, int(unfinished)


def active_domains(lab_host: LabHost) -> dict[UUID, str]:
    """The domains the host's libvirtd runs or holds paused: id -> name."""
    conn = libvirt.open(lab_host.uri)
    try:
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return {UUID(d.UUIDString()): d.name() for d in active}
    finally:
        conn.close()


def domains_differ(running: dict[UUID, UUID | None], lab_hosts: dict[UUID, LabHost]) -> list[str]:
    """What the lab hosts' libvirtd run (or hold paused) against `running`
    (VM id -> the host the log says it runs on): a VM recorded Running
    without its domain running there, a domain running where the log does
    not put it, a domain running on two hosts."""
    found = []
    seen: dict[UUID, list[str]] = defaultdict(list)
    for host_id, lab_host in lab_hosts.items():
        try:
            domains = active_domains(lab_host)
        except libvirt.libvirtError as error:
            found.append(f"{lab_host.name}'s libvirtd does not answer: {error}")
            continue
        for vm in domains:
            seen[vm].append(lab_host.name)
        want = {vm for vm, host in running.items() if host == host_id}
        if missing := sorted(want - domains.keys()):
            found.append(f"{lab_host.name}: VMs recorded Running there, no domain runs: {missing}")
        if extra := sorted(domains.keys() - want):
            found.append(
                f"{lab_host.name}: domains running that the log does not run there:"
                f" {[domains[vm] for vm in extra]}"
            )
    found += [f"vm {vm}'s domain runs on {hosts}" for vm, hosts in seen.items() if len(hosts) > 1]
    elsewhere = sorted(vm for vm, host in running.items() if host not in lab_hosts)
    if elsewhere:
        found.append(f"VMs recorded Running on no lab host: {elsewhere}")
    return found
