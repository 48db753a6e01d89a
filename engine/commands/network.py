"""Commands on network aggregates (being written)."""
