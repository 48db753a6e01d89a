"""Api layer: built by later issues."""
