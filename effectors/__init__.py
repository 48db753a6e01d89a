"""Effectors layer: built by later issues."""
