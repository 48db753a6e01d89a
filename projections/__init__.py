"""Projections layer: built by later issues."""
