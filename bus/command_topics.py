"""Commands over Kafka, the transport side: topic names, the headers a
command carries and the answer record the gateway (api/kafka_gateway.py)
publishes for it.

A command is a CloudEvent in binary mode on `<prefix>.commands`: ce_type
names the engine command (schemas/commands/<ce_type>.json describes the
value), ce_id is its idempotency key, the caller's token travels in the
`authorization` header (`Bearer <token>`, as over HTTP). Its one answer is
a CloudEvent on `<prefix>.command.results`, keyed by the command's ce_id:
`io.cloudengine.command.accepted.v1` with the HTTP API's 202 body, or
`io.cloudengine.command.refused.v1` with the problem document it would give.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from cloud_engine.bus.cloudevents import Headers
from cloud_engine.bus.naming import SPEC_VERSION, TYPE_PREFIX

ACCEPTED = f"{TYPE_PREFIX}.command.accepted.v1"
REFUSED = f"{TYPE_PREFIX}.command.refused.v1"
TOKEN_HEADER = "authorization"
# The engine commands the gateway takes: those the HTTP API builds from a
# route (api/kafka_commands.py derives the same set from the route table,
# and tests/unit/test_kafka_command_codec.py holds the two in step). The others
# in schemas/commands/ are the engine's own (effector results, steps of
# operations) and are refused.
COMMAND_TYPES = (
    "AllocateIp",
    "CancelHostMaintenance",
    "CancelStoragePoolMaintenance",
    "CreateCluster",
    "CreateImageStore",
    "CreateNetwork",
    "CreateNetworkRule",
    "CreateNic",
    "CreatePhysicalNetwork",
    "CreatePod",
    "CreateStoragePool",
    "CreateVolume",
    "CreateZone",
    "DeactivateTemplate",
    "DeclareHostAlive",
    "DeployVm",
    "DestroyNetwork",
    "DisableCluster",
    "DisableHost",
    "DisableImageStore",
    "DisablePhysicalNetwork",
    "DisablePod",
    "DisableStoragePool",
    "DisableZone",
    "EnableCluster",
    "EnableHost",
    "EnableImageStore",
    "EnablePhysicalNetwork",
    "EnablePod",
    "EnableStoragePool",
    "EnableZone",
    "ExitHostMaintenance",
    "ExitStoragePoolMaintenance",
    "HostOperation",
    "PoolOperation",
    "ReactivateTemplate",
    "RegisterHost",
    "RegisterTemplate",
    "ReleaseIp",
    "ReleaseNic",
    "RequestTemplateDownload",
    "RevokeNetworkRule",
    "UpdateVmHa",
    "VmOperation",
    "VolumeOperation",
)

Outcome = Literal["accepted", "refused"]


def commands_topic(prefix: str) -> str:
    return f"{prefix}.commands"


def results_topic(prefix: str) -> str:
    return f"{prefix}.command.results"


def gateway_group(prefix: str) -> str:
    return f"{prefix}.command-gateway"


class Incoming(msgspec.Struct, frozen=True, kw_only=True):
    """The headers of a command record, as the gateway reads them (missing
    ones empty: the gateway says which in its answer)."""

    id: str
    source: str
    type: str
    token: str
    content_type: str

    def __repr__(self) -> str:
        # The token stays out of every log line and traceback.
        return f"Incoming(id={self.id!r}, source={self.source!r}, type={self.type!r})"

    @classmethod
    def of(cls, headers: Sequence[tuple[str, bytes]]) -> Incoming:
        found: dict[str, str] = {}
        for name, value in headers:
            # First one wins; a header that is not UTF-8 counts as missing.
            if name.lower() not in found:
                try:
                    found[name.lower()] = value.decode()
                except UnicodeDecodeError:
                    found[name.lower()] = ""
        return cls(
            id=found.get("ce_id", ""),
            source=found.get("ce_source", ""),
            type=found.get("ce_type", ""),
            token=found.get(TOKEN_HEADER, ""),
            content_type=found.get("content-type", ""),
        )


# Answers of one (source, id) always get the same ce_id: a republished
# answer is the same event.
_ANSWER_NAMESPACE = uuid.UUID("5b0b1a52-4d3e-4f0e-9a51-2f6f7d0c0a11")


def answer_id(source: str, command_id: str) -> str:
    return str(uuid.uuid5(_ANSWER_NAMESPACE, f"{source}\n{command_id}"))


def answer_headers(
    command: Incoming, outcome: Outcome, status: int, *, source: str, time: datetime | None = None
) -> Headers:
    """The CloudEvents headers of the answer to `command`."""
    when = (time or datetime.now(UTC)).isoformat()
    media = "application/json" if outcome == "accepted" else "application/problem+json"
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", answer_id(command.source, command.id).encode()),
        ("ce_source", source.encode()),
        ("ce_type", (ACCEPTED if outcome == "accepted" else REFUSED).encode()),
        ("ce_time", when.encode()),
        ("ce_subject", command.id.encode()),
        ("ce_commandsource", command.source.encode()),
        ("ce_commandtype", command.type.encode()),
        ("ce_status", str(status).encode()),
        ("content-type", media.encode()),
    ]
