"""A virtual router's nftables table, rendered from its spec.

One table per router (`ip ce_vr_<network hex 10>`) in the router's own
namespace: nothing else on the machine is read or written. The table is
replaced as a whole in one nft transaction (declare it, delete it, write
it again), so it never holds half of an update. Every rule carries a
comment naming what asked for it (`rule:<id>` for a network rule,
`egress` for the network's source NAT, `base` for the fixed policy); the
router observes the table by those comments (`nft -j list table`), which
is how a rule deleted behind the engine's back is found.

What the table says:
- nat prerouting: port forwarding (a public IP's port range to a private
  IP's port range, port by port) and static NAT (a public IP to one
  private IP, every port);
- nat postrouting: static NAT's way back out (the VM's traffic leaves as
  its public IP), then the network's source NAT (everything else from the
  network's CIDR leaves as the router's public address);
- filter forward: replies pass; a public IP with firewall rules admits new
  connections only from their source CIDRs to their ports (compared with
  the connection's original destination, before NAT) and drops the rest;
  from the public side nothing passes that was not NATed to a VM (default
  deny: the network's CIDR is not reachable as such).
Values are validated before they get here (spec.validate_router), so no
name or address can carry nft syntax.
"""

from __future__ import annotations

from collections import Counter

from cloud_engine.effectors.network.router_spec import PUBLIC_LINK, RouterRule, RouterSpec

EGRESS = "egress"
BASE = "base"


def rule_comment(rule_id: str) -> str:
    return f"rule:{rule_id}"


def _ports(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def _nat_lines(rule: RouterRule) -> tuple[list[str], list[str]]:
    """(prerouting lines, postrouting lines) for a port forwarding or static NAT rule."""
    tag = f'comment "{rule_comment(rule.id)}"'
    pre: list[str] = []
    post: list[str] = []
    if rule.kind == "static_nat":
        pre.append(f"ip daddr {rule.public_ip} dnat to {rule.private_ip} {tag}")
        post.append(
            f'oifname "{PUBLIC_LINK}" ip saddr {rule.private_ip} snat to {rule.public_ip} {tag}'
        )
    elif rule.kind == "port_forwarding":
        assert rule.start_port is not None and rule.private_port is not None
        end = rule.end_port if rule.end_port is not None else rule.start_port
        # nft maps a range onto a range without keeping offsets: one rule a port.
        for offset in range(end - rule.start_port + 1):
            pre.append(
                f"ip daddr {rule.public_ip} meta l4proto {rule.protocol} "
                f"th dport {rule.start_port + offset} "
                f"dnat to {rule.private_ip}:{rule.private_port + offset} {tag}"
            )
    return pre, post


def _firewall_line(rule: RouterRule) -> str:
    match = [f'iifname "{PUBLIC_LINK}"', f"ct original ip daddr {rule.public_ip}"]
    match.append(f"ip saddr {rule.source_cidr}")
    if rule.protocol != "all":
        match.append(f"meta l4proto {rule.protocol}")
    if rule.start_port is not None:
        end = rule.end_port if rule.end_port is not None else rule.start_port
        match.append(f"ct original proto-dst {_ports(rule.start_port, end)}")
    return " ".join(match) + f' accept comment "{rule_comment(rule.id)}"'


def render(spec: RouterSpec) -> str:
    """The nft script that replaces the router's table with what spec asks."""
    pre: list[str] = []
    post: list[str] = []
    for rule in spec.rules:
        p, q = _nat_lines(rule)
        pre += p
        post += q
    post.append(
        f'oifname "{PUBLIC_LINK}" ip saddr {spec.tenant_cidr} '
        f'snat to {spec.public_address} comment "{EGRESS}"'
    )
    forward = [f'ct state established,related accept comment "{BASE}"']
    walled = sorted({r.public_ip for r in spec.rules if r.kind == "firewall" and r.public_ip})
    forward += [_firewall_line(r) for r in spec.rules if r.kind == "firewall"]
    forward += [
        f'iifname "{PUBLIC_LINK}" ct original ip daddr {ip} drop comment "{BASE}"' for ip in walled
    ]
    forward += [
        f'iifname "{PUBLIC_LINK}" ct status dnat accept comment "{BASE}"',
        f'iifname "{PUBLIC_LINK}" drop comment "{BASE}"',
    ]
    t = spec.table
    lines = [
        # Declaring first makes the delete succeed on a router without the table.
        f"table ip {t}",
        f"delete table ip {t}",
        f"table ip {t} {{",
        "  chain vr_pre {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {line}" for line in pre),
        "  }",
        "  chain vr_post {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *(f"    {line}" for line in post),
        "  }",
        "  chain vr_fwd {",
        "    type filter hook forward priority filter; policy accept;",
        *(f"    {line}" for line in forward),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def expected_comments(spec: RouterSpec) -> Counter[str]:
    """How many rules of each comment the rendered table holds."""
    found: Counter[str] = Counter()
    for line in render(spec).splitlines():
        if 'comment "' in line:
            found[line.rsplit('comment "', 1)[1].rstrip('"')] += 1
    return found
