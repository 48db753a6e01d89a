"""Operator-owned fabric: zones, pods, clusters, hosts, storage, physical networks."""
