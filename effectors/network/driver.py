"""Realise engine Networks on one host through libvirt (and iproute2 for VXLAN).

Every method observes first and acts only on the difference, so repeating a
call after it succeeded reports changed=False and the same state; a call
interrupted half-way is finished by the next one. libvirt objects are looked
up inside each Hypervisor.call so a retry after a reconnect never uses a
handle from the dead connection. netns is the network namespace libvirt's
bridges are in (effectors/host_netns.py; None: this process's): VXLAN
devices are made and bridges looked at there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog

from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.network import vxlan
from cloud_engine.effectors.network.network_xml import (
    ParsedNetwork,
    build_network_xml,
    dhcp_host_xml,
    differences,
    parse_network_xml,
)
from cloud_engine.effectors.network.spec import (
    DhcpHost,
    NetworkSpec,
    NetworkState,
    Outcome,
    normalize_mac,
    validate_dhcp_host,
    validate_network,
)

log = structlog.get_logger("effectors.network")

T = TypeVar("T")


class NetworkDriverError(RuntimeError):
    """The host cannot be brought to what was asked; the message says why."""


class NetworkNotFound(NetworkDriverError):
    pass


class NetworkConflict(NetworkDriverError):
    """A network of that name is defined differently; the driver does not
    redefine it in place because that would cut every guest on it off."""


class VlanUnsupported(NetworkDriverError):
    """libvirt refuses <vlan> on Linux-bridge networks (OVS/hostdev only)."""


class DhcpConflict(NetworkDriverError):
    pass


class NetworkDriver:
    def __init__(self, hv: Hypervisor, netns: str | None = None) -> None:
        self.hv = hv
        self.netns = netns

    # -- libvirt plumbing -------------------------------------------------

    def _with_net(self, name: str, action: str, fn: Callable[[Any], T]) -> T | None:
        """fn(network) or None when no network has that name."""

        def call(conn: libvirt.virConnect) -> T | None:
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return None
                raise
            return fn(net)

        return self.hv.call(f"{action} {name}", call)

    def _facts(self, name: str) -> tuple[bool, bool, bool, str, str] | None:
        """(active, persistent, autostart, live XML, config XML) or None."""

        def facts(net: Any) -> tuple[bool, bool, bool, str, str]:
            persistent = bool(net.isPersistent())
            live = net.XMLDesc(0)
            config = live
            if persistent:
                try:
                    config = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
                except libvirt.libvirtError as e:
                    # libvirt's test driver keeps one definition (no inactive
                    # XML, config is ""): updating the live one is all there is.
                    if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                        raise
                    config = ""
            return bool(net.isActive()), persistent, bool(net.autostart()), live, config

        return self._with_net(name, "observe network", facts)

    # -- observe ----------------------------------------------------------

    def observe(self, name: str) -> NetworkState:
        facts = self._facts(name)
        if facts is None:
            return NetworkState(name=name, exists=False, active=False)
        active, _persistent, _autostart, live, _config = facts
        parsed = parse_network_xml(live)
        attached = (
            active
            and parsed.bridge is not None
            and bool(vxlan.vxlan_ports(parsed.bridge, self.netns))
        )
        return NetworkState(
            name=name,
            exists=True,
            active=active,
            bridge=parsed.bridge,
            dhcp_hosts=parsed.dhcp_hosts,
            vxlan_attached=attached,
        )

    # -- ensure / remove --------------------------------------------------

    def ensure(self, spec: NetworkSpec) -> Outcome:
        validate_network(spec)
        changed = False
        facts = self._facts(spec.name)
        if facts is not None:
            diff = differences(spec, parse_network_xml(facts[4] or facts[3]))
            if diff:
                raise NetworkConflict(f"network {spec.name} is defined differently: {diff}")
        if facts is None or not facts[1]:
            self._define(spec)
            changed = True
            facts = self._facts(spec.name)
            if facts is None:
                raise NetworkDriverError(f"network {spec.name} vanished after define")
        active, _persistent, autostart, _live, _config = facts
        if not active:
            self._with_net(spec.name, "start network", lambda net: net.create())
            log.info("network_started", network=spec.name, bridge=spec.bridge)
            changed = True
        if not autostart:
            self._with_net(spec.name, "autostart network", lambda net: net.setAutostart(1))
            changed = True
        changed |= self._converge_vxlan(spec)
        return Outcome(changed=changed, state=self.observe(spec.name))

    def _define(self, spec: NetworkSpec) -> None:
        xml = build_network_xml(spec)
        try:
            self.hv.call(f"define network {spec.name}", lambda c: c.networkDefineXML(xml))
        except HypervisorError as e:
            if spec.isolation == "vlan" and e.code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED:
                raise VlanUnsupported(
                    f"network {spec.name}: libvirt cannot tag VLAN {spec.vlan} on a Linux "
                    f"bridge ({e.message}); needs Open vSwitch or a hostdev network"
                ) from e
            raise
        log.info("network_defined", network=spec.name, bridge=spec.bridge, cidr=spec.cidr)

    def _converge_vxlan(self, spec: NetworkSpec) -> bool:
        wanted = vxlan.device_name(spec.vxlan.vni) if spec.vxlan is not None else None
        changed = False
        # A port left from an earlier VNI would join two segments: drop it.
        for port in vxlan.vxlan_ports(spec.bridge, self.netns):
            if port.get("ifname") != wanted:
                changed |= vxlan.remove_vxlan(str(port["ifname"]), self.netns)
        if spec.vxlan is not None and wanted is not None:
            changed |= vxlan.ensure_vxlan(wanted, spec.vxlan, spec.bridge, self.netns)
        return changed

    def remove(self, spec_or_name: NetworkSpec | str) -> Outcome:
        name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
        devices: set[str] = set()
        if isinstance(spec_or_name, NetworkSpec) and spec_or_name.vxlan is not None:
            devices.add(vxlan.device_name(spec_or_name.vxlan.vni))
        changed = False
        facts = self._facts(name)
        if facts is not None:
            bridge = parse_network_xml(facts[3]).bridge
            if facts[0] and bridge is not None:
                devices |= {str(p["ifname"]) for p in vxlan.vxlan_ports(bridge, self.netns)}
        # The VXLAN port goes first: once the bridge is gone it is no longer
        # findable by name-only removal.
        for dev in sorted(devices):
            changed |= vxlan.remove_vxlan(dev, self.netns)
        if facts is not None:
            if facts[0]:
                self._with_net(name, "stop network", lambda net: net.destroy())
            if facts[1]:
                self._with_net(name, "undefine network", lambda net: net.undefine())
            log.info("network_removed", network=name)
            changed = True
        return Outcome(changed=changed, state=self.observe(name))

    # -- DHCP host entries ------------------------------------------------

    def _targets(self, name: str) -> list[tuple[int, ParsedNetwork]]:
        """(update flag, parsed XML) for the live and persistent definitions,
        each judged separately so a half-applied earlier update is finished."""
        facts = self._facts(name)
        if facts is None:
            raise NetworkNotFound(f"no network named {name}")
        active, persistent, _autostart, live, config = facts
        targets = []
        if active:
            targets.append((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE, parse_network_xml(live)))
        if persistent and config:
            targets.append((libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG, parse_network_xml(config)))
        for _flag, parsed in targets:
            if not parsed.dhcp:
                raise NetworkDriverError(f"network {name} has no DHCP service")
        return targets

    def _update(self, name: str, command: int, xml: str, flag: int) -> None:
        section = libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST
        self._with_net(
            name, "update dhcp host", lambda net: net.update(command, section, -1, xml, flag)
        )

    def add_dhcp_host(self, name: str, host: DhcpHost) -> Outcome:
        host = DhcpHost(mac=normalize_mac(host.mac), ip=host.ip, hostname=host.hostname)
        validate_dhcp_host(host)
        changed = False
        for flag, parsed in self._targets(name):
            if host in parsed.dhcp_hosts:
                continue
            taken = [h for h in parsed.dhcp_hosts if h.ip == host.ip and h.mac != host.mac]
            if taken:
                raise DhcpConflict(f"{host.ip} on {name} is already reserved for {taken[0].mac}")
            same_mac = any(h.mac == host.mac for h in parsed.dhcp_hosts)
            command = (
                libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY
                if same_mac
                else libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
            )
            self._update(name, command, dhcp_host_xml(host), flag)
            changed = True
        if changed:
            log.info("dhcp_host_set", network=name, mac=host.mac, ip=host.ip)
        return Outcome(changed=changed, state=self.observe(name))

    def remove_dhcp_host(self, name: str, mac: str) -> Outcome:
        mac = normalize_mac(mac)
        changed = False
        for flag, parsed in self._targets(name):
            for h in parsed.dhcp_hosts:
                if h.mac == mac:
                    delete = libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE
                    self._update(name, delete, dhcp_host_xml(h), flag)
                    changed = True
        if changed:
            log.info("dhcp_host_removed", network=name, mac=mac)
        return Outcome(changed=changed, state=self.observe(name))
