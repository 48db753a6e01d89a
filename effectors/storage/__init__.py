"""Storage driver: libvirt storage pools and qcow2 volumes on a hypervisor host.

pools.py defines, builds and starts pools (one backend per pool kind);
volumes.py creates, clones, resizes, snapshots, copies and deletes volumes.
Every operation observes first and acts only on the difference, so repeating
a call after it succeeded changes nothing.
"""
