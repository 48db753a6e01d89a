"""Projections: what is derived from the log. Read models (rm_<type>
tables) kept by the projection worker with its position in the same
transaction, their rebuild from position 0, and the audit tools (history,
state at a version or time, export)."""
