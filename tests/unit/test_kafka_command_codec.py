"""Engine commands sent over Kafka go back to the HTTP route that builds
them (api/kafka_commands.py): every route round-trips, and what no HTTP
request could build is refused the way the API refuses it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from cloud_engine.api import kafka_commands
from cloud_engine.api.auth import Principal
from cloud_engine.api.problems import ApiError
from cloud_engine.api.route_table import COMMAND_ROUTES
from cloud_engine.api.routing import Call, CommandRoute
from cloud_engine.bus import command_topics
from cloud_engine.engine.commands.compute import GIB

ADMIN = Principal(token_id=uuid.uuid4(), role="admin", account="ops")
ALICE = Principal(token_id=uuid.uuid4(), role="user", account="alice")

# Valid values where a placeholder would break a field's constraint.
VALID: dict[str, Any] = {
    "ram_mb": 512,
    "cidr": "10.0.0.0/24",
    "source_cidr": "10.0.0.0/24",
    "mac": "52:54:00:AA:BB:CC",
    "address": "10.0.0.5",
    "private_ip": "10.0.0.5",
    "gateway": "10.0.0.1",
    "account": "alice",
}


def sample(route: CommandRoute[Any]) -> Any:
    body = kafka_commands._placeholder(mi.type_info(route.body))
    fixes = {k: v for k, v in VALID.items() if k in route.body.__struct_fields__}
    if "spec" in route.body.__struct_fields__:
        fixes["spec"] = msgspec.structs.replace(body.spec, ram_mb=512)
    return msgspec.structs.replace(body, **fixes)


def send(command: Any, principal: Principal = ADMIN) -> Call[Any]:
    """What the gateway does with a record's value."""
    decoded, offered = kafka_commands.decode(type(command).__name__, msgspec.json.encode(command))
    return kafka_commands.to_call(decoded, offered, principal)


@pytest.mark.parametrize("route", COMMAND_ROUTES, ids=lambda r: r.name)
def test_every_route_round_trips(route: CommandRoute[Any]) -> None:
    target = uuid.uuid4() if route.target else None
    command = route.build(Call(sample(route), ADMIN, target))
    call = send(command)
    assert call.resource_id == target
    assert route.build(call) == command


def test_the_bus_lists_the_offered_types() -> None:
    assert list(command_topics.COMMAND_TYPES) == kafka_commands.COMMAND_TYPES


def deploy(**extra: Any) -> Any:
    route = next(r for r in COMMAND_ROUTES if r.name == "deployVm")
    return msgspec.structs.replace(route.build(Call(sample(route), ADMIN, None)), **extra)


def refusal(command: Any, principal: Principal = ADMIN) -> ApiError:
    with pytest.raises(ApiError) as caught:
        send(command, principal)
    return caught.value


def test_a_field_the_api_never_sets_is_refused() -> None:
    error = refusal(deploy(vm_id=uuid.uuid4()))
    assert (error.status, error.code, error.field) == (422, "field-not-offered", "vm_id")


def test_the_api_s_access_rules_hold() -> None:
    assert send(deploy(account="alice", host_id=None), ALICE).principal == ALICE
    error = refusal(deploy(account="bob", host_id=None), ALICE)
    assert (error.status, error.field) == (403, "account")
    error = refusal(deploy(account="alice", host_id=uuid.uuid4()), ALICE)
    assert (error.status, error.field) == (403, "host_id")


def test_sizes_are_whole_gib_as_in_the_api() -> None:
    route = next(r for r in COMMAND_ROUTES if r.name == "createVolume")
    command = route.build(Call(sample(route), ADMIN, None))
    assert send(command).body.size_gb * GIB == command.size_bytes
    error = refusal(msgspec.structs.replace(command, size_bytes=GIB + 1))
    assert (error.status, error.field) == (422, "size_bytes")


def test_the_engine_s_own_commands_and_bad_values_are_refused() -> None:
    with pytest.raises(ApiError) as caught:
        kafka_commands.decode("MarkVmRunning", b'{"vm_id": "%s"}' % str(uuid.uuid4()).encode())
    assert (caught.value.status, caught.value.code) == (400, "unknown-command")
    with pytest.raises(ApiError) as caught:
        kafka_commands.decode("DeployVm", b'{"name": "x"}')
    assert caught.value.status == 422
    with pytest.raises(ApiError) as caught:
        kafka_commands.decode("DeployVm", b"not json")
    assert caught.value.status == 400


def test_the_token_stays_out_of_reprs() -> None:
    incoming = command_topics.Incoming.of([("ce_id", b"1"), ("authorization", b"Bearer ce_s3")])
    assert incoming.token == "Bearer ce_s3"
    assert "ce_s3" not in repr(incoming)


def test_the_events_doc_lists_every_command_taken() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs/events.md").read_text()
    missing = [name for name in kafka_commands.COMMAND_TYPES if f"| `{name}`" not in text]
    assert not missing, f"docs/events.md (Commands over Kafka) does not list {missing}"


def test_offsets_commit_up_to_the_first_command_not_answered() -> None:
    from aiokafka import TopicPartition

    from cloud_engine.api.kafka_offsets import Offsets

    a, b = TopicPartition("c", 0), TopicPartition("c", 1)
    offsets = Offsets()
    for n in (5, 6, 7):
        offsets.add(a, n)
    offsets.add(b, 3)
    offsets.done(a, 6)  # finished before 5: nothing to commit yet
    assert offsets.committable() == {}
    offsets.done(a, 5)
    offsets.done(b, 3)
    assert offsets.committable() == {a: 7, b: 4}
    assert offsets.committable() == {}  # only what moved
    assert offsets.pending == 1
    offsets.done(a, 7)
    assert offsets.committable() == {a: 8}
