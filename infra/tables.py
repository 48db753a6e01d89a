"""The names of the tables more than one component reads.

The event store's table is written by engine/store.py (through the
eventsourcing recorder, which derives the name from its application) and
read directly by the relay, the projections, the API and the engine's
planner; the read models (rm_<aggregate type>) are written by the
projection worker and read by the API, the effectors and the engine. Every
reader names them here, so a rename is one edit.
"""

from __future__ import annotations

EVENTS_TABLE = "cloudengine_events"
# The eventsourcing recorder NOTIFYs on this channel after each commit.
EVENTS_CHANNEL = "cloudengine_events"
# Each projection's position (projections/readmodel.py keeps it).
READ_MODEL_POSITIONS = "rm_positions"


def events_table(schema: str) -> str:
    """The event store's table, schema-qualified for SQL."""
    return f'"{schema}".{EVENTS_TABLE}'


def table_name(aggregate_type: str, suffix: str = "") -> str:
    """A read model's table: rm_<public aggregate name><suffix>."""
    return f"rm_{aggregate_type}{suffix}"


def read_model(schema: str, aggregate_type: str) -> str:
    """A read model's table, schema-qualified for SQL."""
    return f'"{schema}".{table_name(aggregate_type)}'


def positions_table(schema: str) -> str:
    return f'"{schema}".{READ_MODEL_POSITIONS}'
