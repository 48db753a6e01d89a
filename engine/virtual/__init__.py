"""Orchestrated (tenant) resources: VMs, volumes, networks and what hangs off them."""
