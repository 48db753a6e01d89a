"""The commands topic and the results topic in the AsyncAPI document
(bus/asyncapi.py adds these to the event channels).

The integrator's side, like the rest of the document: it sends commands
(one message per command type the gateway takes, whose payload is the
command's JSON Schema in schemas/commands/) and receives answers (the HTTP
API's CommandAccepted or Problem, referenced from schemas/openapi.json).
"""

from __future__ import annotations

from typing import Any

from cloud_engine.bus.command_topics import (
    ACCEPTED,
    COMMAND_TYPES,
    REFUSED,
    TOKEN_HEADER,
    commands_topic,
    results_topic,
)
from cloud_engine.bus.naming import SPEC_VERSION

JSONSchema = dict[str, Any]
BINDING_VERSION = "0.5.0"


def _text(description: str, **extra: Any) -> JSONSchema:
    return {"type": "string", "description": description, **extra}


def command_headers() -> JSONSchema:
    properties = {
        "ce_specversion": _text("CloudEvents spec version.", const=SPEC_VERSION),
        "ce_id": _text(
            "The command's id and idempotency key: the same command sent again with the same "
            "ce_id (and ce_source and token) runs once and is answered once. 1 to 255 printable "
            "ASCII characters without spaces.",
            pattern="^[\\x21-\\x7e]{1,255}$",
        ),
        "ce_source": _text("Who sends it, e.g. `/billing`; with ce_id, unique per command."),
        "ce_type": _text(
            "The command: one of the messages below, whose value is "
            "`schemas/commands/<ce_type>.json`.",
            enum=list(COMMAND_TYPES),
        ),
        TOKEN_HEADER: _text(
            "`Bearer <token>`: an API token (`cloud-engine token create`), verified as over "
            "HTTP. Never copied into events, answers or logs.",
            pattern="^Bearer ce_",
        ),
        "content-type": _text("Media type of the value.", const="application/json"),
    }
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0 Kafka protocol binding, binary content mode: attributes as "
            "UTF-8 record headers, the command's JSON as the value."
        ),
        "properties": properties,
        "required": [n for n in properties if n != "content-type"],
    }


def answer_headers() -> JSONSchema:
    properties = {
        "ce_specversion": _text("CloudEvents spec version.", const=SPEC_VERSION),
        "ce_id": _text("The answer's own id, the same for every copy of it.", format="uuid"),
        "ce_source": _text("CLOUD_ENGINE_EVENT_SOURCE (default `/cloudengine`)."),
        "ce_type": _text("Accepted or refused.", enum=[ACCEPTED, REFUSED]),
        "ce_time": _text("When the answer was published.", format="date-time"),
        "ce_subject": _text("The command's ce_id; equal to the record key."),
        "ce_commandsource": _text("The command's ce_source."),
        "ce_commandtype": _text("The command's ce_type."),
        "ce_status": _text(
            "The HTTP status the API would have answered: 202, or the problem's status.",
            pattern="^[0-9]{3}$",
        ),
        "content-type": _text(
            "`application/json` (accepted) or `application/problem+json` (refused).",
            enum=["application/json", "application/problem+json"],
        ),
    }
    return {
        "type": "object",
        "description": "CloudEvents 1.0, binary content mode, like the events.",
        "properties": properties,
        "required": list(properties),
    }


def _key(description: str) -> JSONSchema:
    return {"kafka": {"key": _text(description), "bindingVersion": BINDING_VERSION}}


def parts(prefix: str, partitions: int) -> tuple[JSONSchema, JSONSchema, JSONSchema, JSONSchema]:
    """(channels, operations, messages, schemas) to add to the document."""
    messages: JSONSchema = {}
    for name in COMMAND_TYPES:
        messages[name] = {
            "name": name,
            "title": f"{name} command",
            "summary": f"The engine command `{name}`; the value is schemas/commands/{name}.json.",
            "contentType": "application/json",
            "headers": {
                "allOf": [
                    {"$ref": "#/components/schemas/CommandHeaders"},
                    {"type": "object", "properties": {"ce_type": {"const": name}}},
                ]
            },
            "payload": {"$ref": f"commands/{name}.json"},
            "bindings": {"$ref": "#/components/messageBindings/commandKey"},
        }
    for ce_type, title, schema in (
        (ACCEPTED, "Command accepted", "CommandAccepted"),
        (REFUSED, "Command refused", "Problem"),
    ):
        messages[ce_type] = {
            "name": ce_type,
            "title": title,
            "summary": f"The HTTP API's `{schema}` body for the command named by the key.",
            "headers": {
                "allOf": [
                    {"$ref": "#/components/schemas/AnswerHeaders"},
                    {"type": "object", "properties": {"ce_type": {"const": ce_type}}},
                ]
            },
            "payload": {"$ref": f"openapi.json#/components/schemas/{schema}"},
            "correlationId": {
                "description": "The command's ce_id.",
                "location": "$message.header#/ce_subject",
            },
            "bindings": _key("The command's ce_id."),
        }
    channels: JSONSchema = {
        "commands": {
            "address": commands_topic(prefix),
            "title": "Commands",
            "description": (
                "Commands to cloud-engine, taken by its command gateway with the same "
                "checks as the HTTP API. Commands with the same key are executed in the "
                "order sent; use the resource's id as key when order matters, else the "
                f"ce_id. Topic `<prefix>.commands`, created with {partitions} partitions."
            ),
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in COMMAND_TYPES},
        },
        "command_results": {
            "address": results_topic(prefix),
            "title": "Command answers",
            "description": (
                "One answer per command, keyed by its ce_id: accepted (with the operation "
                "id and the log position) or refused (the problem document). Topic "
                "`<prefix>.command.results`."
            ),
            "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in (ACCEPTED, REFUSED)},
        },
    }
    operations: JSONSchema = {
        "send_commands": {
            "action": "send",
            "title": "Send commands",
            "channel": {"$ref": "#/channels/commands"},
            "messages": [{"$ref": f"#/channels/commands/messages/{n}"} for n in COMMAND_TYPES],
        },
        "receive_command_results": {
            "action": "receive",
            "title": "Receive command answers",
            "channel": {"$ref": "#/channels/command_results"},
            "messages": [
                {"$ref": f"#/channels/command_results/messages/{t}"} for t in (ACCEPTED, REFUSED)
            ],
        },
    }
    schemas = {"CommandHeaders": command_headers(), "AnswerHeaders": answer_headers()}
    return channels, operations, messages, schemas
