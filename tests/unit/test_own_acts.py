"""effectors.own_acts: which lifecycle events are the effector's own echo."""

from __future__ import annotations

import uuid

from cloud_engine.effectors.own_acts import OwnActs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_domain_is_its_own_echo_while_acted_on_and_for_the_window_after() -> None:
    clock = Clock()
    acts = OwnActs(window_s=2.0, clock=clock)
    domain, other = uuid.uuid4(), uuid.uuid4()
    assert not acts.recent(domain)
    acts.begin(domain)
    clock.now += 60  # a long act stays its own however long it takes
    assert acts.recent(domain) and not acts.recent(other)
    acts.end(domain)
    clock.now += 1.9
    assert acts.recent(domain)
    clock.now += 0.2
    assert not acts.recent(domain)


def test_overlapping_acts_on_one_domain_end_with_the_last() -> None:
    clock = Clock()
    acts = OwnActs(window_s=1.0, clock=clock)
    domain = uuid.uuid4()
    acts.begin(domain)
    acts.begin(domain)
    acts.end(domain)
    clock.now += 10
    assert acts.recent(domain)  # the second act is still running
    acts.end(domain)
    clock.now += 1.5
    assert not acts.recent(domain)


def test_expired_domains_are_forgotten() -> None:
    clock = Clock()
    acts = OwnActs(window_s=1.0, clock=clock)
    for _ in range(5000):
        d = uuid.uuid4()
        acts.begin(d)
        acts.end(d)
        clock.now += 0.01
    assert len(acts._until) <= 4097


class Dom:
    def __init__(self, domain: uuid.UUID) -> None:
        self.domain = domain

    def UUID(self) -> bytes:  # noqa: N802  # libvirt's name
        return self.domain.bytes


async def test_only_events_of_other_domains_wake_the_reconciler() -> None:
    import asyncio

    from cloud_engine.effectors.reconciler import Reconciler

    acts = OwnActs(window_s=60.0)
    rec = Reconciler(
        None,  # type: ignore[arg-type]  # not read: no round runs here
        None,  # type: ignore[arg-type]
        zones=None,
        effector="e",
        hypervisor_for=None,  # type: ignore[arg-type]
        own_acts=acts,
    )
    rec._loop = asyncio.get_running_loop()
    rec._wake = asyncio.Event()
    own, other = uuid.uuid4(), uuid.uuid4()
    acts.begin(own)
    rec._on_lifecycle(None, Dom(own), 0, 0, "test:///default")
    await asyncio.sleep(0)
    assert not rec._wake.is_set() and rec.echoes_ignored == 1
    rec._on_lifecycle(None, Dom(other), 0, 0, "test:///default")
    await asyncio.sleep(0)
    assert rec._wake.is_set()
