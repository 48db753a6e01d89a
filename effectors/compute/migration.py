"""Live migration between two hosts, and what is left of one cut short.

The effector drives libvirt's managed migration (migrate3 without
PEER2PEER: begin and perform on the source, prepare and finish on the
destination, through its two connections). If the effector dies, libvirt
cleans up when those connections close. Measured on lab hosts, SIGKILL at
every moment of a 128 MiB guest's migration left the domain running on
exactly one host: before the switch-over the source resumes and the
destination's incoming domain (transient, paused) is removed within 0.5 s;
after it the destination runs and the source is gone. Two states are
possible in between and are handled anyway, since a host's libvirtd can be
the one that dies: the source paused with the destination gone (between
perform and finish: the source is resumed), and the destination running
with the source paused and still defined (between finish and confirm: the
source is removed, its guest having moved).

settle() brings whatever it finds to one running domain and says where it
runs, so a migration asked again after a crash, or a failed one, is
reported as what the hosts show: done on the destination, or still on the
source with libvirt's error.
"""

from __future__ import annotations

import time
from typing import Literal
from uuid import UUID

import structlog

from cloud_engine.effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from cloud_engine.effectors.compute.spec import Outcome
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError

log = structlog.get_logger("effectors.compute")

Where = Literal["source", "destination"]


class RunsTwice(Exception):
    """The domain runs on both hosts: not a state a migration leaves; an
    operator must choose (the engine records the migration as failed)."""

    def __init__(self, uuid: UUID, source: str, destination: str) -> None:
        super().__init__(f"domain {uuid} runs on both {source} and {destination}")


def settle(
    source: ComputeDriver, destination: ComputeDriver, uuid: UUID, *, wait_s: float = 5.0
) -> Where:
    """Where the domain runs, once at most one host has it: a destination
    that runs it wins (the source's leftover is removed); an incoming domain
    an interrupted migration left is given wait_s to be cleaned up by
    libvirt, then destroyed; a source paused by one is resumed."""
    deadline = time.monotonic() + wait_s
    while True:
        there = destination.observe(uuid)
        here = source.observe(uuid)
        if there.state == "running":
            if here.state == "running":
                raise RunsTwice(uuid, source.hypervisor.uri, destination.hypervisor.uri)
            if here.exists:
                # Paused past the switch-over, or a definition left behind:
                # its guest runs on the destination now.
                log.warning("migration_source_removed", uuid=str(uuid), state=here.state)
                source.undefine(uuid)
            return "destination"
        if there.exists and there.state != "shutoff":
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            # Never ran there: the source (or nothing) holds the guest.
            log.warning("migration_incoming_destroyed", uuid=str(uuid), state=there.state)
            destination.destroy(uuid)
            continue
        if here.state == "paused":
            log.warning("migration_source_resumed", uuid=str(uuid))
            source.start(uuid)
            continue
        if here.state == "running":
            return "source"
        if not here.exists:
            raise DomainMissing(uuid)
        raise DomainNotRunning(uuid, here.state)


def live_migrate(
    source: Hypervisor,
    destination: Hypervisor,
    uuid: UUID,
    *,
    migration_uri: str | None = None,
    unsafe: bool = False,
) -> Outcome:
    """The running domain moved to destination (or found there already);
    raises libvirt's error when it still runs on the source."""
    here, there = ComputeDriver(source), ComputeDriver(destination)
    if settle(here, there, uuid) == "destination":
        return Outcome(changed=False, state=there.observe(uuid))
    started = time.monotonic()
    try:
        here.migrate(uuid, destination, migration_uri=migration_uri, unsafe=unsafe)
    except HypervisorError as e:
        # What libvirt reports and what the hosts show can differ (a reply
        # lost after the switch-over): the hosts decide.
        if settle(here, there, uuid) != "destination":
            raise
        log.warning("migration_error_after_switch_over", uuid=str(uuid), error=str(e))
    # A migration that returned may still have left the source defined
    # (confirm cut short): settle again before reporting.
    settle(here, there, uuid)
    log.info("migration_done", uuid=str(uuid), took_s=round(time.monotonic() - started, 3))
    return Outcome(changed=True, state=there.observe(uuid))
