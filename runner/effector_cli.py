"""`cloud-engine effector [--zone ID ...]`: an effector as its own process."""

from __future__ import annotations

import argparse
import ipaddress
import uuid
from typing import Any

from cloud_engine.effectors.executor import Uplink
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.infra.process import run_component
from cloud_engine.infra.settings import Settings, SettingsError
from cloud_engine.runner.components import ensure_event_store, start_infrastructure

COMMANDS = ("effector",)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "effector",
        help="carry out work on the hypervisors of some zones (needs CLOUD_ENGINE_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="ZONE_ID",
        help="serve this zone (repeatable); all zones when not given",
    )
    parser.add_argument(
        "--uplink-device",
        metavar="DEV",
        help="the hosts' underlay device for VLAN/VXLAN networks; without it they are"
        " host-local bridges",
    )
    parser.add_argument("--uplink-ip", metavar="IP", help="this host's address on the underlay")
    parser.add_argument(
        "--vxlan-peer",
        action="append",
        default=[],
        metavar="IP",
        help="another host's underlay address (repeatable): the VXLAN flood list",
    )


def zones_of(values: list[str]) -> frozenset[uuid.UUID] | None:
    try:
        zones = frozenset(uuid.UUID(v) for v in values)
    except ValueError:
        raise SettingsError(f"--zone needs zone ids (UUIDs), got {values}") from None
    return zones or None


def uplink_of(args: argparse.Namespace) -> Uplink | None:
    if args.uplink_device is None and args.uplink_ip is None:
        if args.vxlan_peer:
            raise SettingsError("--vxlan-peer needs --uplink-device and --uplink-ip")
        return None
    if args.uplink_device is None or args.uplink_ip is None:
        raise SettingsError("--uplink-device and --uplink-ip go together")
    try:
        for ip in (args.uplink_ip, *args.vxlan_peer):
            ipaddress.IPv4Address(ip)
    except ValueError as e:
        raise SettingsError(f"uplink addresses must be IPv4: {e}") from None
    return Uplink(device=args.uplink_device, local_ip=args.uplink_ip, peers=tuple(args.vxlan_peer))


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise SettingsError(
            "CLOUD_ENGINE_KAFKA_BOOTSTRAP: the effector needs a broker (host:port); "
            "`cloud-engine up` runs one for development"
        )
    zones = zones_of(args.zone)
    uplink = uplink_of(args)
    infra = start_infrastructure(settings, broker=False)
    try:
        ensure_event_store(infra.target)
        effector = EffectorService(
            infra.target,
            effector_config(infra.bootstrap, settings.topic_prefix, zones),
            zones=zones,
            uplink=uplink,
        )
        run_component(effector.run, settings.event_loop)
    finally:
        infra.stop()
    return 0
