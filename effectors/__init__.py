"""Effectors: carry out provisioning on hypervisors and storage through
libvirt (compute, storage, network drivers), observe-then-act so a repeated
step is a no-op, report outcomes back as results, and reconcile what the
hosts run against what the log says should run (drift)."""
