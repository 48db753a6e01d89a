"""The lab: N hypervisor hosts on one machine for tests, benchmarks and `up`.

Each host is a set of namespaces (network, mount, UTS, pid) with its own
libvirtd, virtlogd and virtlockd, reached from the machine as its own libvirt
URI; the hosts share an underlay network and a storage directory. Nothing in
engine/, orchestration/ or effectors/ knows it is a lab: they get URIs,
addresses and pool paths (LabHost). This package imports none of them.
"""

from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import DEFAULT_SUBNET, HostStatus, LabError, LabHost

__all__ = ["DEFAULT_SUBNET", "HostStatus", "Lab", "LabError", "LabHost"]
