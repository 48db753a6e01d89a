"""Commands on compute aggregates (being written)."""
