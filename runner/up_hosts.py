"""Where `up`'s demo hosts run: lab hosts or libvirt's test driver.

Lab hosts (lab/) are hypervisors on this machine, each its own libvirtd in
its own namespaces, running guests as real QEMU processes; they need root
and the libvirt and QEMU packages (`./dev` installs them). The test driver
runs anywhere and keeps its domains in `up`'s memory.

A data directory keeps the kind its demo hosts were first registered with
(their URIs are in the log): lab hosts registered beside test-driver hosts
in one cluster would be a cloud whose hosts disagree on what a VM is. So the
choice is made once, on a fresh data directory: the lab where it can run
(CLOUD_ENGINE_UP_HYPERVISOR=auto), else the test driver, with the reason in
one line. Asking for the other kind later is refused with how to start
afresh.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import libvirt
import structlog

from cloud_engine.effectors.compute.spec import DomainType
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.logs import lifecycle
from cloud_engine.infra.process import StopSignals
from cloud_engine.infra.settings import Settings, SettingsError
from cloud_engine.lab import Lab, LabError, LabHost
from cloud_engine.lab.model import MAX_HOSTS, Layout
from cloud_engine.lab.system import require_machine

log = structlog.get_logger("runner.up_hosts")

HostKind = Literal["lab", "test"]
# Hosts a fresh data directory gets: the cluster of three on lab
# hosts; two on the test driver, as `up` always had.
DEFAULT_HOSTS: dict[HostKind, int] = {"lab": 3, "test": 2}
# The idempotency keys (actor "demo") of the demo hosts' registrations,
# runner/demo.py's: a test-driver host n, a lab host hn.
DEMO_ACTOR = "demo"


def test_host_key(n: int) -> str:
    return f"demo/host-{n}"


def lab_host_key(name: str) -> str:
    return f"demo/lab-{name}"


@dataclass(frozen=True)
class DemoHosts:
    """What `up` runs its demo hosts on, once started."""

    kind: HostKind
    count: int
    # Lab hosts only: the lab (stopped when `up` stops), its hosts, and the
    # type of the domains the effector defines on them.
    lab: Lab | None = None
    hosts: tuple[LabHost, ...] = ()
    domain_type: DomainType = "qemu"

    def stop(self) -> None:
        if self.lab is not None:
            self.lab.down()


def registered(store: EventStore) -> tuple[HostKind | None, int]:
    """The kind of demo hosts this event store has, and how many (the
    highest host number registered): from the registrations' idempotency
    keys, one query."""
    numbers = range(1, MAX_HOSTS + 1)
    keys = [(DEMO_ACTOR, test_host_key(n)) for n in numbers]
    keys += [(DEMO_ACTOR, lab_host_key(f"h{n}")) for n in numbers]
    found = {r.key for r in store.recorder.select_idempotency(keys)}
    test = [n for n in numbers if test_host_key(n) in found]
    lab = [n for n in numbers if lab_host_key(f"h{n}") in found]
    if test and lab:
        # Only a hand-made mix gets here; up never registers both.
        raise SettingsError(
            "the demo cluster has test-driver and lab hosts: start on a new data directory"
        )
    if lab:
        return "lab", max(lab)
    if test:
        return "test", max(test)
    return None, 0


def lab_state_dir(settings: Settings) -> Path:
    return settings.data_dir.absolute() / "lab"


def lab_unavailable(state_dir: Path) -> str | None:
    """Why the lab cannot run here (None: it can, as far as can be told
    without starting it)."""
    try:
        require_machine()
        Layout(state_dir)  # its sockets' paths must fit
    except LabError as e:
        return str(e)
    return None


class EarlyLab:
    """The lab started in a thread while PostgreSQL and the broker start
    (each takes seconds, mostly waiting), before the log can tell whether
    this data directory wants it. start() takes it over or takes it down."""

    def __init__(self, lab: Lab, hosts: int) -> None:
        self.lab = lab
        self.taken = False
        self.hosts: list[LabHost] | None = None
        self._thread = threading.Thread(target=self._up, args=(hosts,), name="lab-up", daemon=True)
        self._thread.start()

    def _up(self, hosts: int) -> None:
        # A failure is not reported from here: start() starts the lab again
        # (lab.up is idempotent) and reports what fails then.
        try:
            self.hosts = _start_lab(self.lab, hosts)
        except BaseException as e:
            log.debug("early lab start failed", error=str(e))

    def wait(self) -> None:
        self._thread.join()

    def discard(self) -> None:
        """Down, unless start() took it over."""
        if not self.taken:
            self.taken = True
            self.wait()
            self.lab.down()


def begin(settings: Settings) -> EarlyLab | None:
    """Start the lab now if this data directory will most likely want it:
    lab hosts are not ruled out, the lab can run here, and the data
    directory is new (no event store yet) or had a lab before."""
    if settings.up_hypervisor == "test":
        return None
    state_dir = lab_state_dir(settings)
    if lab_unavailable(state_dir) is not None:
        return None
    fresh = settings.database_url is None and not settings.pgdata.exists()
    if not fresh and not (state_dir / "lab.json").exists():
        return None
    return EarlyLab(Lab(state_dir), settings.up_hosts or DEFAULT_HOSTS["lab"])


def start(
    settings: Settings, store: EventStore, signals: StopSignals, early: EarlyLab | None = None
) -> DemoHosts:
    """Choose the demo hosts' kind for this data directory and start them
    (the lab's hosts; nothing for the test driver). Every refusal is one
    line: a SettingsError or a LabError. An early lab is taken over when
    the choice is the lab, taken down otherwise (also when this raises)."""
    try:
        hosts = _start(settings, store, signals, early)
    except BaseException:
        if early is not None:
            early.discard()
        raise
    if early is not None:
        if hosts.lab is None:
            early.discard()
        early.taken = True
    return hosts


def _start(
    settings: Settings, store: EventStore, signals: StopSignals, early: EarlyLab | None
) -> DemoHosts:
    asked = settings.up_hypervisor
    kind, count = registered(store)
    state_dir = lab_state_dir(settings)
    here = settings.data_dir
    if kind == "test" and asked == "lab":
        raise SettingsError(
            f"--hypervisor lab: the demo hosts of {here} are on libvirt's test driver;"
            " lab hosts need a new data directory (--data-dir or CLOUD_ENGINE_DATA_DIR)"
        )
    if kind == "lab" and asked == "test":
        raise SettingsError(
            f"--hypervisor test: the demo hosts of {here} are lab hosts;"
            " the test driver needs a new data directory (--data-dir or CLOUD_ENGINE_DATA_DIR)"
        )
    if kind == "test" or (kind is None and asked == "test"):
        if kind == "test" and asked == "auto":
            lifecycle(
                log,
                "demo hosts on libvirt's test driver",
                note="this data directory's were registered there;"
                " a new data directory gets lab hosts where the lab can run",
            )
        return DemoHosts("test", _count(settings, "test", count))
    why = lab_unavailable(state_dir)
    if why is not None:
        if kind == "lab" or asked == "lab":
            whose = f"the demo hosts of {here} are lab hosts, but" if kind else "--hypervisor lab:"
            raise LabError(f"{whose} the lab cannot run here: {why}")
        _fall_back(why)
        return DemoHosts("test", _count(settings, "test", 0))
    lab = Lab(state_dir)
    wanted = _count(settings, "lab", count)
    if early is not None:
        early.wait()
    try:
        if early is not None and early.hosts is not None and len(early.hosts) == wanted:
            hosts = early.hosts
        else:
            # What the early start could not do (more hosts registered than
            # it knew, or it failed) is done, or fails, now.
            hosts = _start_lab(lab, wanted)
    except LabError as e:
        if kind == "lab" or asked == "lab" or signals.received is not None:
            raise
        _fall_back(str(e))
        return DemoHosts("test", _count(settings, "test", 0))
    try:
        domain_type = resolve_domain_type(settings, hosts)
    except BaseException:
        lab.down()
        raise
    return DemoHosts("lab", wanted, lab, tuple(hosts), domain_type)


def _fall_back(why: str) -> None:
    log.warning("lab hosts cannot run here; demo hosts on libvirt's test driver", reason=why)


def _count(settings: Settings, kind: HostKind, registered: int) -> int:
    wanted = settings.up_hosts or DEFAULT_HOSTS[kind]
    if registered > wanted:
        # Hosts stay registered (nothing retires a demo host), so they run:
        # a registered host nobody serves would take VMs that never start.
        if settings.up_hosts is not None:
            lifecycle(
                log,
                "keeping every registered demo host",
                asked=wanted,
                hosts=registered,
                note="a data directory keeps its hosts; a new one starts with --hosts",
            )
        return registered
    return wanted


def _start_lab(lab: Lab, hosts: int) -> list[LabHost]:
    began = time.monotonic()
    try:
        started = lab.up(hosts)
        lifecycle(log, "lab hosts up", hosts=hosts, took_s=round(time.monotonic() - began, 2))
        return started
    except BaseException:
        # Whatever started (a host, the switch) goes: nothing is left running
        # for a lab `up` does not use.
        try:
            lab.down()
        except LabError as e:
            log.warning("lab left behind after a failed start", error=str(e))
        raise


def resolve_domain_type(settings: Settings, hosts: list[LabHost]) -> DomainType:
    """kvm or qemu for the lab's domains (CLOUD_ENGINE_UP_DOMAIN_TYPE)."""
    asked = settings.up_domain_type
    if asked == "qemu":
        return "qemu"
    why = kvm_unavailable(hosts[0].uri)
    if why is None:
        return "kvm"
    if asked == "kvm":
        raise SettingsError(f"CLOUD_ENGINE_UP_DOMAIN_TYPE=kvm: {why}")
    lifecycle(log, "guests run under QEMU TCG, not KVM", reason=why)
    return "qemu"


# A KVM that opens and that libvirt offers, yet cannot boot a real guest:
# kvm_pvm (a paravirtualised KVM for nested clouds) stops a syslinux boot
# with "KVM internal error: emulation failure" and hangs a direct kernel
# boot. Its module is named in /sys/module.
BROKEN_KVM_MODULES = ("kvm_pvm",)
SYS_MODULE = Path("/sys/module")


def kvm_unavailable(uri: str) -> str | None:
    """Why a lab host cannot run KVM guests (None: it can): /dev/kvm must
    open read-write here (the lab's QEMU runs as root on this kernel), be a
    KVM that boots real guests (not kvm_pvm), and the host's libvirt must
    offer the kvm domain type for this machine."""
    for module in BROKEN_KVM_MODULES:
        if (SYS_MODULE / module).exists():
            return f"/dev/kvm is {module}, which cannot boot a real guest (emulation failure)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm: {e.strerror}"
    os.close(fd)
    try:
        conn = libvirt.open(uri)
        try:
            caps = ET.fromstring(conn.getCapabilities())
        finally:
            conn.close()
    except libvirt.libvirtError as e:
        return f"the lab host's libvirt: {e.get_error_message()}"
    arch = platform.machine()
    offered = caps.findall(f"guest/arch[@name='{arch}']/domain[@type='kvm']")
    return None if offered else f"libvirt offers no kvm domains for {arch}"


def describe(hosts: DemoHosts) -> str:
    """One line for `up`'s summary (lab hosts only)."""
    names = " ".join(h.name for h in hosts.hosts)
    accel = "KVM" if hosts.domain_type == "kvm" else "QEMU TCG"
    state = hosts.lab.state_dir if hosts.lab is not None else ""
    return f"lab hosts: {names} ({accel}; `cloud-engine lab status --state-dir {state}`)"
