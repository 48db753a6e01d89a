"""The AsyncAPI 3.0.0 document of the Kafka side of the contract (schemas/asyncapi.json).

One channel and one receive operation per aggregate topic, a message per event
type (CloudEvents headers, aggregate id as the key, the event's JSON Schema as
payload) and the dead-letter topics. Topic names and defaults come from
infra.settings.Settings, independent of the environment of the generator.
bus.schemas writes the document next to the event and command schemas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cloud_engine.bus import asyncapi_commands
from cloud_engine.bus.naming import (
    SPEC_VERSION,
    TYPE_PREFIX,
    EventType,
    all_event_types,
    dead_letter_topic,
)
from cloud_engine.bus.naming import topic_for as _topic_for
from cloud_engine.bus.struct_schema import JSONSchema, normalise_descriptions
from cloud_engine.engine.catalog import AGGREGATES
from cloud_engine.infra.settings import Settings

# Where bus.schemas writes the document; payload references are relative to it.
ASYNCAPI_PATH = "schemas/asyncapi.json"
_DOCUMENT_DIR = ASYNCAPI_PATH.rpartition("/")[0] + "/"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
# Version of the contract document itself. Event and command shapes are
# versioned by their ce_type / name; bump this when topics or headers change.
CONTRACT_VERSION = "1.0.0"

UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _setting_default(name: str) -> Any:
    """A setting's default, independent of the environment of the generator."""
    for info in msgspec.structs.fields(Settings):
        if info.name == name:
            return info.default
    raise LookupError(f"infra.settings.Settings has no field {name!r}")


def default_prefix() -> str:
    return str(_setting_default("topic_prefix"))


def topic_for(aggregate: str) -> str:
    """The aggregate's topic under the default prefix (what the documents show)."""
    return _topic_for(default_prefix(), aggregate)


def _header_schema() -> JSONSchema:
    def text(description: str, **extra: Any) -> JSONSchema:
        return {"type": "string", "description": description, **extra}

    source = _setting_default("event_source")
    properties: dict[str, JSONSchema] = {
        "ce_specversion": text("CloudEvents spec version.", const=SPEC_VERSION),
        "ce_id": text(
            "`<aggregate id>:<aggregate version>`: the same for every copy of one event, "
            "also when the relay publishes it again.",
            pattern=f"^{UUID_PATTERN}:[0-9]+$",
        ),
        "ce_source": text(
            f"CLOUD_ENGINE_EVENT_SOURCE (default `{source}`).", minLength=1, examples=[source]
        ),
        "ce_type": text(
            f"`{TYPE_PREFIX}.<aggregate>.<event>.v<version>`; selects the data schema.",
            pattern=rf"^{TYPE_PREFIX.replace('.', '[.]')}[.][a-z_]+[.][a-z_]+[.]v[0-9]+$",
        ),
        "ce_time": text("When the event was recorded (UTC).", format="date-time"),
        "ce_subject": text("The aggregate id; equal to the record key.", format="uuid"),
        "ce_dataschema": text(
            "URI of the data's JSON Schema, `urn:cloudengine:schema:<ce_type>`: the `$id` "
            "of `schemas/events/<ce_type>.json` in the cloud-engine repository.",
            format="uri",
        ),
        "ce_position": text(
            "Global position of the event in the event store: gap-free, in commit order, "
            "unique per event. A decimal integer.",
            pattern="^[0-9]+$",
        ),
        "ce_aggregateversion": text(
            "Version of the aggregate after this event: 1 for its first event, then +1 per "
            "event. A decimal integer. Dedupe on (ce_subject, ce_aggregateversion).",
            pattern="^[0-9]+$",
        ),
        "ce_correlationid": text("Correlation id of the flow the event belongs to; may be empty."),
        "ce_causationid": text("Id of the message that caused the event; may be empty."),
        "ce_requestid": text("Id of the API request that caused the event; may be empty."),
        "ce_actor": text("Who sent the command that recorded the event."),
        "content-type": text("Media type of the record value.", const="application/json"),
    }
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0 Kafka protocol binding, binary content mode: every attribute "
            "is a record header whose value is a UTF-8 string; extension attributes are "
            "lower-case. Consumers must ignore headers they do not know."
        ),
        "properties": properties,
        "required": list(properties),
    }


# Added by bus.consumer.EventConsumer to a dead-lettered record (kept in step by
# tests/unit/test_schemas.py).
DEAD_LETTER_HEADERS: dict[str, str] = {
    "dlq_error_type": "Class name of the error (MalformedEvent for a record that is not "
    "a CloudEvent of ours).",
    "dlq_error": "The error message, at most 4,000 characters.",
    "dlq_attempts": "How often the handler was tried (0 when the record could not be "
    "decoded). A decimal integer.",
    "dlq_group": "The consumer group that gave up.",
    "dlq_topic": "Topic the record was read from.",
    "dlq_partition": "Partition the record was read from. A decimal integer.",
    "dlq_offset": "Offset the record had there; for finding it, never for dedupe. A decimal "
    "integer.",
}


def _dead_letter_headers() -> JSONSchema:
    properties: dict[str, JSONSchema] = {
        name: {"type": "string", "description": description}
        for name, description in DEAD_LETTER_HEADERS.items()
    }
    for name in ("dlq_attempts", "dlq_partition", "dlq_offset"):
        properties[name]["pattern"] = "^[0-9]+$"
    return {
        "type": "object",
        "description": (
            "The original record's headers, unchanged (the CloudEvents headers for an event "
            "that could be decoded), followed by these error headers."
        ),
        "properties": properties,
        "required": list(properties),
    }


def _message(event_type: EventType) -> JSONSchema:
    return {
        "name": event_type.ce_type,
        "title": f"{event_type.aggregate} {event_type.name} (v{event_type.version})",
        "summary": (
            f"The `{event_type.name}` event of a `{event_type.aggregate}` aggregate, "
            f"version {event_type.version}."
        ),
        "contentType": "application/json",
        "headers": {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventHeaders"},
                {
                    "type": "object",
                    "properties": {
                        "ce_type": {"const": event_type.ce_type},
                        "ce_dataschema": {"const": event_type.schema_uri},
                    },
                },
            ]
        },
        "payload": {"$ref": event_type.schema_path.removeprefix(_DOCUMENT_DIR)},
        "correlationId": {
            "description": "Correlation id of the flow the event belongs to.",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": {"$ref": "#/components/messageBindings/aggregateKey"},
    }


def asyncapi() -> JSONSchema:
    prefix = default_prefix()
    partitions = _setting_default("topic_partitions")
    types = all_event_types()
    channels: dict[str, JSONSchema] = {}
    operations: dict[str, JSONSchema] = {}
    messages: dict[str, JSONSchema] = {}
    for aggregate in AGGREGATES:
        own = [t for t in types if t.aggregate == aggregate]
        for t in own:
            messages[t.ce_type] = _message(t)
        channels[aggregate] = {
            "address": topic_for(aggregate),
            "title": f"{aggregate} events",
            "description": (
                f"Every event of every `{aggregate}` aggregate, keyed by aggregate id, so "
                "one aggregate's events are in one partition in the order they were "
                f"recorded. Topic `<prefix>.{aggregate}.events` (CLOUD_ENGINE_TOPIC_PREFIX, "
                f"default `{prefix}`), created by the relay with CLOUD_ENGINE_TOPIC_PARTITIONS "
                f"partitions (default {partitions})."
            ),
            "messages": {t.ce_type: {"$ref": f"#/components/messages/{t.ce_type}"} for t in own},
            "bindings": {
                "kafka": {"partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}
            },
        }
        operations[f"receive_{aggregate}"] = {
            "action": "receive",
            "title": f"Receive {aggregate} events",
            "channel": {"$ref": f"#/channels/{aggregate}"},
            "messages": [{"$ref": f"#/channels/{aggregate}/messages/{t.ce_type}"} for t in own],
        }
    channels["dead_letters"] = {
        "address": dead_letter_topic(prefix, "{group}"),
        "title": "Dead letters of one consumer group",
        "description": (
            "Records a consumer group could not process (undecodable, invalid or failing "
            "every retry) are copied here unchanged (same key, value and ce_* headers) "
            "with headers describing the error, and the group moves on. Topic "
            "`<prefix>.dlq.<group>`."
        ),
        "parameters": {"group": {"description": "The consumer group id."}},
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
    }
    operations["receive_dead_letters"] = {
        "action": "receive",
        "title": "Receive dead letters",
        "channel": {"$ref": "#/channels/dead_letters"},
        "messages": [{"$ref": "#/channels/dead_letters/messages/deadLetter"}],
    }
    messages["deadLetter"] = {
        "name": "deadLetter",
        "title": "Dead letter",
        "summary": "A record of an event topic that a consumer group gave up on.",
        "headers": _dead_letter_headers(),
        "payload": {"description": "The original record value, unchanged."},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The original record key (the aggregate id for events).",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    command_channels, command_operations, command_messages, command_schemas = (
        asyncapi_commands.parts(prefix, partitions)
    )
    channels.update(command_channels)
    operations.update(command_operations)
    messages.update(command_messages)
    message_bindings: JSONSchema = {
        "aggregateKey": {
            "kafka": {
                "key": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The aggregate id (UTF-8), equal to ce_subject.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "commandKey": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "Chosen by the sender: commands with the same key run in"
                    " the order sent (the resource's id, or the ce_id).",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    document: JSONSchema = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "cloud-engine events",
            "version": CONTRACT_VERSION,
            "description": (
                "Every event recorded by cloud-engine, published to Kafka by the relay as a "
                "CloudEvent (binary content mode) on its aggregate type's topic, and the "
                "commands integrators send over Kafka with their answers. Topic "
                f"names show the default prefix `{prefix}`; it is configurable with "
                "CLOUD_ENGINE_TOPIC_PREFIX. Delivery is at least once: dedupe on "
                "(ce_subject, ce_aggregateversion) or on ce_position, never on offsets. "
                "See docs/events.md."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"CloudEventHeaders": _header_schema(), **command_schemas},
            "messages": messages,
            "messageBindings": message_bindings,
        },
    }
    # Written here, not from docstrings, but held to the same form as every
    # generated document, so no library's formatting can change the file.
    normalise_descriptions(document)
    return document
