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
(a seeded draw among equals; among those writing their heartbeat, and
deferred until one runs a domain) loses its power (Lab.power_off: its
libvirtd and every QEMU die at once) and is powered on with its disk: at
the first cut and every other one once automation has confirmed it Down
and fenced it (the host's read model; at most 60 s): HA restarts its
HA-enabled VMs elsewhere, the others are recorded Stopped; at the others
2-4 s later (drawn): it answers again before or while it is confirmed
Down (convergence restarts its HA-enabled VMs and records the others
Stopped, or the fence cuts it again). A host found off that the injector
did not cut (fenced) is powered on 2 s later, as an operator would. The
supervisor thread does the powering on. Only a host writing its heartbeat
is cut: every host that answers has the cluster's shared pool (the
effector's reconciler makes it, effectors/host_pools.py), so that is every
host that is on; before that, a host where no VM ever ran had no pool,
wrote no heartbeat and, once fenced, stayed Down (two runs ended so).
Operation steps get 60 s instead of 30 s: with 30 s most first deploys
timed out at load 15.

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
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import libvirt
from chaos_checks import unsettled_vms
from chaos_load import Shape
from chaos_parts import KINDS, PROCESSES, Parts, Setting
from migrate import fabric

from cloud_engine.automation.heartbeat import HEARTBEAT_DIR
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
        ids: dict[str, UUID],
        rng: random.Random,
        pool: Path,
    ) -> None:
        automation = ("automation", "--lab-state", str(lab.state_dir), "--up-after", "2")
        super().__init__(pg, broker, tmp, fmt, {**PROCESSES, "automation": automation})
        # A lab deploy (the root volume copied, a TCG QEMU started) under
        # the faults on a loaded machine takes longer than the test
        # driver's: with 30 s most first deploys timed out (load 15).
        self.env["CLOUD_ENGINE_OPERATION_STEP_DEADLINE_S"] = "60"
        self.lab, self.ids, self.rng, self.pool = lab, ids, rng, pool
        self.names = sorted(ids)
        self.fence_after: dict[str, datetime] = {}  # host name -> cut at
        self.power_due: dict[str, float] = {}  # host name -> when to power it on
        self.cuts: list[str] = []
        self.powered_on = 0
        self._looked = 0.0

    def fenced(self, name: str) -> bool:
        """Whether the log (its read model) has the host fenced since the
        cut that waits for it."""
        since = self.fence_after.get(name)
        if since is None:
            return False
        try:
            at = asyncio.run(fenced_at(self.pg.target, self.ids[name]))
            return at is not None and at > since
        except Exception:  # PostgreSQL killed, say: asked again next time
            return False

    def beating(self) -> list[LabHost]:
        """The hosts that are on and write their heartbeat to the shared
        pool (one that is on but has not had its pool made yet is not
        cut: once fenced it could not be declared Up again)."""
        now = time.time()
        found = []
        for h in self.lab.hosts():
            with contextlib.suppress(OSError):
                if now - (self.pool / HEARTBEAT_DIR / h.name).stat().st_mtime < 3.0:
                    found.append(h)
        return found

    def running(self) -> dict[str, int]:
        """Domains running on each host that writes its heartbeat."""
        found = {}
        for h in self.beating():
            with contextlib.suppress(libvirt.libvirtError):
                found[h.name] = len(active_domains(h))
        return found

    def ready(self, kind: str) -> bool:
        # A cut of a host running nothing shows little: later, once one runs
        # a VM (the first deploys take a minute at load 15).
        return kind != CUT or any(self.running().values())

    def kill(self, kind: str) -> None:
        if kind != CUT:
            super().kill(kind)
            return
        # The host running the most domains (a seeded draw among equals).
        running = self.running()
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
        # other one, keeps the host off until automation has confirmed it
        # Down and fenced it (HA then restarts its VMs elsewhere), at most
        # 60 s: ~5 s on a quiet pipeline (docs/performance.md), over 18 s
        # while it recovers from the faults before. The others only 2-4 s:
        # it answers again before, or while, it is confirmed Down.
        victim = self.cuts[-1]
        if len(self.cuts) % 2:
            self.power_due[victim] = time.monotonic() + 60.0
            self.fence_after[victim] = datetime.now(UTC)
        else:
            self.power_due[victim] = time.monotonic() + self.rng.uniform(2.0, 4.0)

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
            due = self.power_due.setdefault(name, now + 2.0)
            if now < due and not self.fenced(name):
                continue
            try:
                self.lab.power_on(name, wipe=False)
            except LabError as error:  # tried again
                print(f"  {name} power on failed: {error}", flush=True)
                self.power_due[name] = now + 2.0
                continue
            del self.power_due[name]
            self.fence_after.pop(name, None)
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
        self.pool = self.state_dir
        self.made: LabParts | None = None
        self.figures = ""

    def fabric(self, service: CommandService, tmp: Path, base_url: str) -> LabFabric:
        hosts = self.lab.up(LAB_HOSTS)
        ids = fabric(service, hosts, tmp, base_url, account="chaos", tags=100)
        self.pool = Path(hosts[0].shared_pool_path) / "bench"  # as fabric() made it
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
        ids = {h.name: host_id for host_id, h in self.lab_hosts.items()}
        self.made = LabParts(pg, broker, tmp, fmt, self.lab, ids, self.rng, self.pool)
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


async def fenced_at(target: DatabaseTarget, host_id: UUID) -> datetime | None:
    conn = await connect(target)
    try:
        at = await conn.fetchval(
            f"SELECT data->>'fenced_at' FROM {read_model(target.schema, 'host')} WHERE id = $1",
            host_id,
        )
    finally:
        await conn.close()
    return datetime.fromisoformat(at) if at else None


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
