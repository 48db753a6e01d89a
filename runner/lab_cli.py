"""`cloud-engine lab up|down|status|power-off|power-on|partition|heal`:
hypervisor hosts on this machine, each its own libvirtd (lab/)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from cloud_engine.infra.settings import Settings
from cloud_engine.lab import DEFAULT_SUBNET, Lab, LabError, LabHost

COMMANDS = ("lab",)


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="hypervisor hosts on this machine (namespaces, own libvirtd)")
    actions = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start hosts h1..hN (those running are left alone)")
    up.add_argument("--hosts", type=int, default=3, help="how many hosts (default 3)")
    up.add_argument(
        "--subnet",
        help=f"underlay network of a new lab (default {DEFAULT_SUBNET}; link-local or RFC 1918)",
    )
    up.add_argument("--wipe", action="store_true", help="hosts that start get an empty disk")
    down = actions.add_parser("down", help="stop every host; leaves no process, link or mount")
    down.add_argument(
        "--wipe", action="store_true", help="also delete the hosts' disks and shared storage"
    )
    status = actions.add_parser("status", help="hosts, URIs, addresses and what answers")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    off = actions.add_parser("power-off", help="a power cut: everything in the host dies at once")
    off.add_argument("host")
    on = actions.add_parser("power-on", help="boot a host that is off (empty by default)")
    on.add_argument("host")
    on.add_argument("--keep-disk", action="store_true", help="keep its definitions and pool")
    part = actions.add_parser("partition", help="the host runs on, but nobody reaches it")
    part.add_argument("host")
    heal = actions.add_parser("heal", help="undo partition")
    heal.add_argument("host")
    for parser in (up, down, status, off, on, part, heal):
        parser.add_argument(
            "--state-dir", help="where the lab keeps its state (default <data dir>/lab)"
        )
        parser.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else settings.data_dir / "lab"
    lab = Lab(state_dir, subnet=getattr(args, "subnet", None))
    try:
        return _act(lab, args)
    except LabError as e:
        print(f"cloud-engine lab: {e}", file=sys.stderr)
        return 1


def _act(lab: Lab, args: argparse.Namespace) -> int:
    action = args.lab_command
    if action == "up":
        started = time.monotonic()
        hosts = lab.up(args.hosts, wipe=args.wipe)
        print(f"lab up: {len(hosts)} hosts in {time.monotonic() - started:.1f} s")
        for host in hosts:
            print(_describe(host))
        print(f"shared storage: {hosts[0].shared_pool_path}")
    elif action == "down":
        lab.down(wipe=args.wipe)
        print("lab down")
    elif action == "status":
        return _status(lab, as_json=args.json)
    elif action == "power-off":
        lab.power_off(args.host)
        print(f"{args.host}: off")
    elif action == "power-on":
        print(_describe(lab.power_on(args.host, wipe=not args.keep_disk)))
    elif action == "partition":
        lab.partition(args.host)
        print(f"{args.host}: partitioned (underlay down, libvirt unreachable)")
    elif action == "heal":
        lab.heal(args.host)
        print(f"{args.host}: healed")
    return 0


def _describe(host: LabHost) -> str:
    return f"  {host.name}  {host.address:<15}  {host.uri}"


def _status(lab: Lab, *, as_json: bool) -> int:
    found = lab.status()
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(found).decode()))
        return 0
    if not found:
        print("no lab hosts (cloud-engine lab up)")
        return 0
    for s in found:
        state: str = s.power
        if s.power == "on":
            state = "partitioned" if s.partitioned else "up" if s.answering else "not answering"
        domains = "" if s.running_domains is None else f"  {s.running_domains} running"
        print(f"  {s.host.name}  {state:<13}  {s.host.address:<15}  {s.host.uri}{domains}")
    return 0
