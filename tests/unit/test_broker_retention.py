"""The durable dev broker's retention: which record batches a pass deletes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cloud_engine.bus.broker_retention import (
    Batch,
    Commit,
    Passed,
    Policy,
    parse_batch,
    parse_commit,
    plan,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(days=10)
POLICY = Policy(retention_s=60, group_idle_s=3600)
CLUSTER = "tansu_cluster"


def _key(topic: str, partition: int, offset: int) -> str:
    where = f"clusters/{CLUSTER}/topics/{topic}/partitions/{partition:010}"
    return f"{where}/records/{offset:020}.batch"


def _batches(topic: str, partition: int, bases: list[int], age_s: float = 600) -> list[Batch]:
    out = []
    for n, base in enumerate(bases):
        # Older first, one second apart, the newest age_s - len + 1 s old.
        modified = NOW - timedelta(seconds=age_s + len(bases) - 1 - n)
        batch = parse_batch("tansu", _key(topic, partition, base), modified)
        assert batch is not None
        out.append(batch)
    return out


def _commit(group: str, topic: str, partition: int, offset: int, age_s: float = 5) -> Commit:
    group_at = f"clusters/{CLUSTER}/groups/consumers/{group}"
    key = f"{group_at}/offsets/{topic}/partitions/{partition:010}.json"
    body = json.dumps({"offset": offset, "leader_epoch": None, "metadata": ""}).encode()
    commit = parse_commit("tansu", key, NOW - timedelta(seconds=age_s), body)
    assert commit is not None
    return commit


def _bases(batches: list[Batch]) -> list[int]:
    return [b.base for b in batches]


def _plan(batches: list[Batch], commits: list[Commit]) -> list[int]:
    return _bases(plan(batches, commits, now=NOW, started=STARTED, policy=POLICY).delete)


def test_keys_parse_as_tansu_writes_them() -> None:
    batch = parse_batch("tansu", _key("cloudengine.vm", 3, 1234), NOW)
    assert batch is not None
    assert (batch.partition, batch.base) == (("tansu", CLUSTER, "cloudengine.vm", 3), 1234)
    watermark = f"clusters/{CLUSTER}/topics/t/partitions/0000000000/watermark.json"
    assert parse_batch("tansu", watermark, NOW) is None
    # A group id may hold slashes; the topic and partition are the last parts.
    commit = parse_commit(
        "tansu",
        f"clusters/{CLUSTER}/groups/consumers/a/b/offsets/t.x/partitions/0000000002.json",
        NOW,
        b'{"offset": 42}',
    )
    assert commit is not None
    assert (commit.group[2], commit.partition[2:], commit.offset) == ("a/b", ("t.x", 2), 42)
    # Unreadable or negative: the group holds everything back.
    assert _commit("g", "t", 0, -1).offset == 0
    assert parse_commit("tansu", f"clusters/{CLUSTER}/groups/consumers/g.json", NOW, b"{}") is None


def test_batches_every_live_group_read_and_older_than_retention_go() -> None:
    batches = _batches("t", 0, [0, 10, 20, 30, 40])
    commits = [_commit("fast", "t", 0, 50), _commit("slow", "t", 0, 20)]
    # The batch at 20 ends at 30, past the slow group's offset: kept, and
    # every batch after it, so the log stays contiguous.
    assert _plan(batches, commits) == [0, 10]


def test_a_batch_holding_a_groups_offset_is_kept() -> None:
    batches = _batches("t", 0, [0, 10, 20])
    assert _plan(batches, [_commit("g", "t", 0, 15)]) == [0]
    assert _plan(batches, [_commit("g", "t", 0, 9)]) == []


def test_the_newest_batch_of_a_partition_is_always_kept() -> None:
    batches = _batches("t", 0, [0, 10, 20])
    assert _plan(batches, [_commit("g", "t", 0, 30)]) == [0, 10]


def test_young_batches_are_kept_whatever_the_groups_read() -> None:
    young = _batches("t", 0, [0, 10, 20], age_s=10)
    assert _plan(young, [_commit("g", "t", 0, 30)]) == []
    # Age stops the run too: a young batch keeps the ones after it.
    mixed = _batches("t", 0, [0, 10], age_s=600) + _batches("t", 0, [20, 30], age_s=5)
    assert _plan(mixed, [_commit("g", "t", 0, 40)]) == [0, 10]


def test_a_topic_no_live_group_reads_is_kept_whole() -> None:
    # Dead letters: written for people, read by no consumer group.
    dead = _batches("cloudengine.dlq.projections", 0, [0, 1, 2])
    assert _plan(dead + _batches("t", 0, [0, 10]), [_commit("g", "t", 0, 20)]) == [0]
    idle = _commit("gone", "cloudengine.dlq.projections", 0, 3, age_s=7200)
    assert _plan(dead, [idle]) == []


def test_a_partition_a_live_group_has_not_committed_is_held_from_zero() -> None:
    # The group reads topic t (it committed partition 0), not yet partition 1.
    batches = _batches("t", 0, [0, 10, 20]) + _batches("t", 1, [0, 5, 9])
    assert _plan(batches, [_commit("g", "t", 0, 30)]) == [0, 10]


def test_an_idle_group_holds_nothing_back_and_is_reported_once() -> None:
    batches = _batches("t", 0, [0, 10, 20, 30])
    idle = _commit("gone", "t", 0, 10, age_s=7200)
    commits = [idle, _commit("g", "t", 0, 40)]
    chosen = plan(batches, commits, now=NOW, started=STARTED, policy=POLICY)
    assert _bases(chosen.delete) == [0, 10, 20]
    assert chosen.passed == [Passed("gone", "t", 0, committed=10, log_start=30)]
    # The next pass finds its offset below the log start already: no report.
    rest = batches[3:] + _batches("t", 0, [40, 50])
    again = plan(rest, [idle, _commit("g", "t", 0, 60)], now=NOW, started=STARTED, policy=POLICY)
    assert _bases(again.delete) == [30, 40] and again.passed == []


def test_after_a_restart_every_group_has_a_full_window_to_come_back() -> None:
    batches = _batches("t", 0, [0, 10, 20, 30], age_s=86_400)
    # Stopped for a day: the group's last commit is a day old; another
    # group has read everything since the start.
    commits = [_commit("projections", "t", 0, 10, age_s=86_400), _commit("g", "t", 0, 40)]
    restarted = NOW - timedelta(seconds=30)
    chosen = plan(batches, commits, now=NOW, started=restarted, policy=POLICY)
    assert _bases(chosen.delete) == [0]
    assert plan(batches, commits, now=NOW, started=STARTED, policy=POLICY).passed


def test_the_period_sets_how_often_a_pass_runs_and_zero_turns_it_off() -> None:
    assert not Policy(retention_s=0).enabled
    assert Policy(retention_s=8).every_s == 2 and Policy(retention_s=600).every_s == 30
    assert Policy(retention_s=0.5).every_s == 1
