"""Compute driver: idempotent libvirt domain operations (define, start, stop, ...)."""
