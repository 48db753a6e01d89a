"""The newest version of each router rule this process has acted on.

Read models lag, so a router plan read a moment before the router's lock
was taken can be older than what another work (or the reconciler)
programmed meanwhile: a rule just applied whose row was not there yet, or
a rule just revoked still shown Active. Left as read, the table would drop
the first and put the second back. So under the lock each rule is taken at
the newest version this process has acted on (`newest`): a stale read
never undoes a newer act. One effector serves a zone's routers, so this
process has seen every act on them since it started; after a restart the
reads are all it has, and they are as new as its first work's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from uuid import UUID

from cloud_engine.effectors.desired import RuleView

# network id -> rule id -> (the newest view acted on, its public IP's address)
_acted: dict[UUID, dict[UUID, tuple[RuleView, str | None]]] = {}
_acted_guard = threading.Lock()


def newest(
    network_id: UUID, rules: Iterable[RuleView], public_ips: Mapping[UUID, str]
) -> tuple[tuple[RuleView, ...], dict[UUID, str]]:
    """The network's rules at the newest version acted on here (by id) and
    their public IPs' addresses, the given views recorded as acted on.
    Call under the router's lock."""
    with _acted_guard:
        acted = _acted.setdefault(network_id, {})
        for r in rules:
            old = acted.get(r.id)
            if old is None or old[0].version <= r.version:
                address = public_ips.get(r.public_ip_id) if r.public_ip_id else None
                acted[r.id] = (r, address or (old[1] if old else None))
        views = list(acted.values())
    return (
        tuple(sorted((v for v, _ in views), key=lambda r: r.id)),
        {v.public_ip_id: a for v, a in views if v.public_ip_id and a},
    )


def forget(network_id: UUID) -> None:
    """The network's router is gone: nothing of it to keep."""
    with _acted_guard:
        _acted.pop(network_id, None)
