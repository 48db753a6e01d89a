"""The lab: N hypervisor hosts on this machine, each its own libvirtd."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import libvirt

from cloud_engine.lab import boot, hostfs, public, state, underlay
from cloud_engine.lab.model import (
    MAX_HOSTS,
    HostRecord,
    HostStatus,
    LabError,
    LabHost,
    LabState,
    Layout,
    host_name,
)
from cloud_engine.lab.system import require_machine, run

# The client sockets a partition hides (the admin socket stays: the lab
# uses it to drop the clients already connected).
_CLIENT_SOCKETS = ("libvirt-sock", "libvirt-sock-ro")


class Lab:
    """A lab kept in state_dir. Every method that changes it takes the lab's
    lock, so two processes (two `cloud-engine lab` commands, a test and a
    benchmark) take turns."""

    def __init__(
        self,
        state_dir: Path,
        *,
        subnet: str | None = None,
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._subnet = subnet
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s

    def _open(self) -> tuple[LabState, Layout]:
        require_machine()
        lab_state = state.load(self.state_dir / "lab.json")
        if self._subnet and self._subnet != lab_state.subnet:
            powered = [h.name for h in lab_state.hosts if h.power == "on"]
            if powered:
                raise LabError(
                    f"the lab runs on {lab_state.subnet} ({', '.join(powered)} on):"
                    " `lab down` before changing its subnet"
                )
            lab_state.subnet = self._subnet
        return lab_state, Layout(self.state_dir, lab_state.subnet)

    def _save(self, lab_state: LabState) -> None:
        state.save(self.state_dir / "lab.json", lab_state)

    def _lock(self) -> AbstractContextManager[None]:
        return state.locked(self.state_dir / "lock")

    def up(self, hosts: int, *, wipe: bool = False) -> list[LabHost]:
        """Hosts h1..h<hosts> running. Those that run are left alone; what a
        killed process left behind is removed first. wipe=True gives the
        hosts that start an empty disk (no definitions, empty local pool)."""
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
        with self._lock():
            lab_state, layout = self._open()
            extra = [h.name for h in lab_state.hosts if h.index > hosts and boot.host_alive(h)]
            if extra:
                raise LabError(
                    f"the lab has {', '.join(extra)} on besides h1..h{hosts}: `lab down` first"
                )
            records = {h.name: h for h in lab_state.hosts}
            for index in range(1, hosts + 1):
                name = host_name(index)
                if name not in records:
                    records[name] = HostRecord(name=name, index=index)
                    lab_state.hosts.append(records[name])
            wanted = [records[host_name(i)] for i in range(1, hosts + 1)]
            running = {r.name for r in wanted if r.power == "on" and self._healthy(layout, r)}
            boot.sweep(layout, keep=running)
            underlay.ensure_switch(layout)
            if not lab_state.public_subnet:
                lab_state.public_subnet = public.choose_subnet(layout)
            public.ensure(layout, lab_state.public_subnet)
            hostfs.write_names(layout, [(r.name, layout.address(r.index)) for r in wanted])
            todo = [r for r in wanted if r.name not in running]
            for r in lab_state.hosts:
                if r.name not in running:
                    r.power, r.partitioned = "off", False
            self._boot(layout, lab_state, todo, wipe=wipe)
            # A QEMU or libvirt upgrade makes hosts probe again: keep that.
            hostfs.keep_caps(layout, wanted[0].name)
            return [layout.view(r) for r in wanted]

    def _healthy(self, layout: Layout, record: HostRecord) -> bool:
        """Running, on the switch, and answering unless partitioned."""
        if not boot.host_alive(record) or record.name not in underlay.ports(layout):
            return False
        if record.partitioned:
            return True
        return boot.answers(layout.view(record).uri, layout.run_dir(record.name) / "libvirt-sock")

    def _boot(
        self, layout: Layout, lab_state: LabState, records: list[HostRecord], *, wipe: bool
    ) -> None:
        if not records:
            self._save(lab_state)
            return
        # Without a seed, one host probes QEMU and the others start from
        # what it found (libvirtd probes on first need, seconds per binary).
        seeded = hostfs.caps_seeded(layout)
        waves = [records] if seeded else [records[:1], records[1:]]
        for wave in waves:
            for record in wave:
                hostfs.prepare(layout, record.name, record.index, wipe=wipe)
                underlay.add_host(layout, record.name, record.index)
                public.add_host(layout, record.name)
                boot.spawn(layout, record)
                # Recorded at once: a process killed now leaves a lab the
                # next `up` can find.
                self._save(lab_state)
            boot.wait_ready(layout, wave, self.ready_timeout_s)
            self._save(lab_state)
            if wave and not seeded:
                boot.probe_caps(layout.view(wave[0]).uri)
                hostfs.keep_caps(layout, wave[0].name)
                seeded = True

    def down(self, *, wipe: bool = False) -> None:
        """Stop every host (QEMU asked to quit, then killed), remove their
        namespaces, links and processes. wipe=True also deletes the hosts'
        disks and the shared storage."""
        with self._lock():
            lab_state, layout = self._open()
            boot.stop([h for h in lab_state.hosts if h.power == "on"], self.stop_grace_s + 1)
            boot.sweep(layout, names=[h.name for h in lab_state.hosts], keep=())
            public.remove(layout)
            underlay.remove_switch(layout)
            for record in lab_state.hosts:
                record.power, record.partitioned = "off", False
                shutil.rmtree(layout.run_dir(record.name), ignore_errors=True)
            if wipe:
                shutil.rmtree(layout.hosts_dir, ignore_errors=True)
                shutil.rmtree(layout.shared_dir, ignore_errors=True)
                lab_state.hosts = []
            self._save(lab_state)

    def public_network(self) -> tuple[str, str]:
        """The public network's CIDR and the root namespace's address on it
        (its gateway), once the lab has been up."""
        subnet = state.load(self.state_dir / "lab.json").public_subnet
        if not subnet:
            raise LabError("the lab has no public network yet: `lab up` first")
        return subnet, public.gateway(subnet)

    def hosts(self) -> list[LabHost]:
        """The hosts that are on, as recorded."""
        lab_state = state.load(self.state_dir / "lab.json")
        layout = Layout(self.state_dir, lab_state.subnet)
        return [layout.view(h) for h in lab_state.hosts if h.power == "on"]

    def host(self, name: str) -> LabHost:
        lab_state = state.load(self.state_dir / "lab.json")
        return Layout(self.state_dir, lab_state.subnet).view(lab_state.host(name))

    def status(self) -> list[HostStatus]:
        lab_state, layout = self._open()
        found = []
        for record in lab_state.hosts:
            view = layout.view(record)
            up = record.power == "on" and boot.host_alive(record)
            sock = layout.run_dir(record.name) / "libvirt-sock"
            answering = up and not record.partitioned and boot.answers(view.uri, sock)
            found.append(
                HostStatus(
                    host=view,
                    power="on" if up else "off",
                    partitioned=record.partitioned,
                    answering=answering,
                    running_domains=_running(view.uri) if answering else None,
                )
            )
        return found

    def power_off(self, name: str) -> None:
        """A power cut: the host's processes (daemons, every QEMU) die at
        once, then its link and namespace go."""
        with self._lock():
            lab_state, layout = self._open()
            record = lab_state.host(name)
            boot.power_cut(layout, record)
            shutil.rmtree(layout.run_dir(name), ignore_errors=True)
            self._save(lab_state)

    def power_on(self, name: str, *, wipe: bool = True) -> LabHost:
        """Boot a host that is off. By default it comes back empty (no
        domain, network or pool defined, an empty local pool); wipe=False
        keeps its disk, like a machine that reboots."""
        with self._lock():
            lab_state, layout = self._open()
            record = lab_state.host(name)
            if record.power == "on" and self._healthy(layout, record):
                return layout.view(record)
            boot.sweep(layout, names=[name])
            underlay.ensure_switch(layout)
            if not lab_state.public_subnet:
                lab_state.public_subnet = public.choose_subnet(layout)
            public.ensure(layout, lab_state.public_subnet)
            self._boot(layout, lab_state, [record], wipe=wipe)
            return layout.view(record)

    def partition(self, name: str) -> None:
        """The host keeps running, but nobody reaches it: its underlay port
        goes down, its libvirt sockets disappear and connected clients are
        dropped."""
        with self._lock():
            lab_state, layout = self._open()
            record = self._on(lab_state, name)
            underlay.set_link(layout, name, up=False)
            run_dir = layout.run_dir(name)
            for sock in _CLIENT_SOCKETS:
                if (run_dir / sock).exists():
                    (run_dir / sock).rename(run_dir / f"{sock}.partitioned")
            _drop_clients(run_dir / "libvirt-admin-sock")
            record.partitioned = True
            self._save(lab_state)

    def heal(self, name: str) -> None:
        with self._lock():
            lab_state, layout = self._open()
            record = self._on(lab_state, name)
            run_dir = layout.run_dir(name)
            for sock in _CLIENT_SOCKETS:
                if (run_dir / f"{sock}.partitioned").exists():
                    (run_dir / f"{sock}.partitioned").rename(run_dir / sock)
            underlay.set_link(layout, name, up=True)
            record.partitioned = False
            self._save(lab_state)

    def _on(self, lab_state: LabState, name: str) -> HostRecord:
        record = lab_state.host(name)
        if record.power != "on" or not boot.host_alive(record):
            raise LabError(f"host {name} is off")
        return record

    def run_in(
        self, name: str, argv: Sequence[str], *, timeout_s: float | None = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its network, mount, UTS and pid
        namespaces), e.g. to ping another host or look at its links."""
        target = self.host(name)
        enter = ["nsenter", "-t", str(target.pid), "-n", "-m", "-u", "-p", "--wd=/", "--"]
        return subprocess.run(
            [*enter, *argv], capture_output=True, text=True, timeout=timeout_s, check=False
        )


def _running(uri: str) -> int | None:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        return len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    finally:
        conn.close()


def _drop_clients(admin_sock: Path) -> None:
    uri = f"libvirtd:///system?socket={admin_sock}"
    listed = run(["virt-admin", "-c", uri, "srv-clients-list", "libvirtd"], check=False)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            run(["virt-admin", "-c", uri, "client-disconnect", "libvirtd", fields[0]], check=False)
