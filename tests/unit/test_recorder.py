"""Which command records which effector result."""

from __future__ import annotations

import uuid

import msgspec

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.engine.commands.compute import (
    CompleteVmMigration,
    FailVm,
    FailVmExpunge,
    FailVmMigration,
    FailVmReboot,
    MarkVmExpunged,
    MarkVmRebooted,
    MarkVmRunning,
    MarkVmStopped,
    RecordVmDrift,
)
from cloud_engine.engine.commands.liveness import (
    RecordHostAnswered,
    RecordSharedPoolUnavailable,
    RecordUnknownDomain,
    RecordVolumeDrift,
    SuspectHost,
)
from cloud_engine.engine.commands.network import (
    ActivateNetworkRule,
    FailNetworkRule,
    MarkNetworkRuleRevoked,
    RecordNetworkRuleDrift,
)
from cloud_engine.engine.commands.storage import (
    FailSnapshot,
    FailTemplate,
    FailVolume,
    MarkSnapshotCreated,
    MarkTemplateDownloaded,
    MarkVolumeCreated,
    MarkVolumeResized,
    MarkVolumeReverted,
)
from cloud_engine.orchestration.recorder import command_for, context_for

HOST = uuid.UUID("0b9d1f4e-8f3a-4a51-9d1c-6f1e2a3b4c5d")
ID = uuid.uuid4()
OP = uuid.uuid4()


def result(kind: str, outcome: str = "succeeded", error: str | None = None) -> EffectorResult:
    return EffectorResult(
        work_id=OP,
        kind=kind,
        aggregate_id=ID,
        version=3,
        outcome=outcome,  # type: ignore[arg-type]
        error=error,
        effector="e1",
        correlation_id="corr",
    )


def test_successes_become_the_matching_completion():
    assert command_for(result("vm.start")) == MarkVmRunning(vm_id=ID)
    assert command_for(result("vm.stop")) == MarkVmStopped(vm_id=ID)
    assert command_for(result("vm.expunge")) == MarkVmExpunged(vm_id=ID)
    assert command_for(result("volume.create")) == MarkVolumeCreated(volume_id=ID)
    assert command_for(result("volume.resize")) == MarkVolumeResized(volume_id=ID)
    assert command_for(result("volume.revert")) == MarkVolumeReverted(volume_id=ID)
    assert command_for(result("snapshot.create")) == MarkSnapshotCreated(snapshot_id=ID)
    assert command_for(result("snapshot.create", "failed", "locked")) == FailSnapshot(
        snapshot_id=ID, reason="locked"
    )
    assert command_for(result("template.download")) == MarkTemplateDownloaded(template_id=ID)
    assert command_for(result("template.download", "failed", "HTTP 404")) == FailTemplate(
        template_id=ID, reason="HTTP 404"
    )


def test_failures_carry_the_error_as_reason():
    failed = command_for(result("vm.start", "failed", "internal error: no space (libvirt 1)"))
    assert failed == FailVm(vm_id=ID, reason="internal error: no space (libvirt 1)")
    assert command_for(result("volume.create", "failed", "x" * 900)) == FailVolume(
        volume_id=ID, reason="x" * 500
    )
    assert command_for(result("vm.start", "failed")) == FailVm(
        vm_id=ID, reason="failed without a message"
    )


def test_reboots_are_recorded_done_or_failed():
    assert command_for(result("vm.reboot")) == MarkVmRebooted(vm_id=ID)
    assert command_for(result("vm.reboot", "failed", "no domain")) == FailVmReboot(
        vm_id=ID, reason="no domain"
    )


def test_a_failed_expunge_is_recorded_so_its_operation_can_end():
    assert command_for(result("vm.expunge", "failed", "unsupported flags")) == FailVmExpunge(
        vm_id=ID, reason="unsupported flags"
    )


def test_migrations_are_recorded_completed_or_failed():
    assert command_for(result("vm.migrate")) == CompleteVmMigration(vm_id=ID)
    assert command_for(result("vm.migrate", "failed", "migration refused")) == FailVmMigration(
        vm_id=ID, reason="migration refused"
    )


def test_destroys_and_deletes_record_nothing_drift_goes_on_its_aggregate():
    assert command_for(result("vm.destroy")) is None
    stray = msgspec.structs.replace(
        result("drift.unknown_domain"), host_id=HOST, observed="running name=x"
    )
    assert command_for(stray) == RecordUnknownDomain(
        host_id=HOST, domain_id=ID, observed="running name=x"
    )
    gone = msgspec.structs.replace(
        result("drift.volume"), observed="missing", expected="capacity=1"
    )
    assert command_for(gone) == RecordVolumeDrift(
        volume_id=ID, observed="missing", expected="capacity=1"
    )
    unready = msgspec.structs.replace(
        result("drift.host_pool"), host_id=HOST, observed="permission denied"
    )
    assert command_for(unready) == RecordSharedPoolUnavailable(
        host_id=HOST, pool_id=ID, observed="permission denied"
    )
    assert command_for(result("volume.delete")) is None


def test_a_result_delivered_twice_has_one_idempotency_key():
    first, again = context_for(result("vm.start")), context_for(result("vm.start"))
    assert first.idempotency_key == again.idempotency_key == f"effector:{OP}:succeeded"
    assert first.actor == "effector:e1"
    assert first.causation_id == str(OP)
    assert first.correlation_id == "corr"


def test_drift_and_unreachable_hosts_are_recorded():
    drift = msgspec.structs.replace(
        result("drift.vm_state"), observed="shutoff", expected="running"
    )
    assert command_for(drift) == RecordVmDrift(vm_id=ID, observed="shutoff", expected="running")
    # Only Suspect: automation confirms Down with the heartbeat.
    unreachable = msgspec.structs.replace(
        result("host.unreachable"), observed="unreachable for 2 rounds", error="no socket"
    )
    assert command_for(unreachable) == SuspectHost(
        host_id=ID, reason="libvirt unreachable for 2 rounds: no socket"
    )
    assert command_for(result("host.reachable")) == RecordHostAnswered(host_id=ID)


def test_network_rules_are_recorded_programmed_revoked_failed_or_put_back():
    assert command_for(result("network_rule.apply")) == ActivateNetworkRule(network_rule_id=ID)
    assert command_for(result("network_rule.revoke")) == MarkNetworkRuleRevoked(network_rule_id=ID)
    assert command_for(result("network_rule.apply", "failed", "nft: syntax")) == (
        FailNetworkRule(network_rule_id=ID, reason="nft: syntax")
    )
    drift = msgspec.structs.replace(result("drift.network_rule"), observed="put back")
    assert command_for(drift) == RecordNetworkRuleDrift(network_rule_id=ID, detail="put back")
    assert command_for(result("network.router")) is None  # nothing to record


def test_nul_characters_in_effector_messages_are_dropped():
    # A NUL would make the domain refuse the failure and the result never be recorded.
    assert command_for(result("vm.start", "failed", "bad\x00 disk")) == FailVm(
        vm_id=ID, reason="bad disk"
    )
    assert command_for(result("vm.start", "failed", "\x00")) == FailVm(
        vm_id=ID, reason="failed without a message"
    )
