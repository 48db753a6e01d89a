"""Commands on storage aggregates (being written)."""
