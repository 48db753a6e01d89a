"""Removing what a test made on a real libvirtd, by its name prefix."""

from __future__ import annotations

import libvirt


def clean_up(uri: str, prefix: str) -> None:
    """Remove the domains, networks and storage pools named with prefix."""
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
        for net in conn.listAllNetworks():
            if net.name().startswith(prefix):
                if net.isActive():
                    net.destroy()
                net.undefine()
        for pool in conn.listAllStoragePools():
            if pool.name().startswith(prefix):
                if pool.isActive():
                    for vol in pool.listAllVolumes():
                        vol.delete()
                    pool.destroy()
                pool.undefine()
    finally:
        conn.close()
