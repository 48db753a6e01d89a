"""Retention for the dev broker's object store: old record batches are deleted once
every live consumer group has read past them.

Why: Tansu's S3 engine (tansu-storage dynostore.rs, `fetch` and
`list_offsets`) lists a partition's whole `records/` prefix on every fetch
behind the end and on every ListOffsets, without `start-after`, and keeps one
object per produced batch forever; so a fetch costs the partition's whole
history, and a soak stalls once that history reaches some thousands of
batches. Kafka bounds a log by retention; this does the same here, in the
store (PostgreSQL rows or this process's memory: bus.broker_backend).

What is deleted, per partition (a contiguous run from the oldest batch, so
the log never has holes): a batch older than the retention period whose
records every live group has committed past. A batch's records end where
the next batch begins, so the newest batch of a partition is always kept
(Tansu answers ListOffsets Latest from it, and the relay checks the end
offsets against what it was acknowledged). A group is live when it
committed within the group window, counted from the store's start at the
latest (a broker that was stopped for a day gives every group a full window
to come back). A live group holds back every partition of each topic it
has committed on: a partition it has no commit for counts as offset 0. A
topic no live group reads (dead letters, kept for people) is left whole:
only fetched partitions cost, and the groups that fetch them commit.

What Tansu then answers (v0.6.0, read in its source): ListOffsets Earliest
is the oldest batch present (it picks the smallest Last-Modified of the
listing), so a new group from `earliest` starts at the new log start; a
fetch from an offset below it returns the batches from the log start on
(Tansu never answers OFFSET_OUT_OF_RANGE; clients drop the duplicates its
fetch loop adds). That skips what the gap held for a group that stopped
longer than the group window: `broker_retention_passed_group` is logged
once per group and partition then (the event store still has every event:
`cloud-engine replay` rebuilds a read model from it).

The watermark object's `low` is left alone: Tansu reports it as the log
start in fetch responses only, and rewriting it would race its conditional
writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import msgspec
import structlog

from cloud_engine.bus.broker_backend import Backend

log = structlog.get_logger("bus.broker_retention")

# Tansu's keys (dynostore.rs): offsets zero-padded to 20 digits, partitions to 10.
RECORD = re.compile(
    r"clusters/(?P<cluster>[^/]+)/topics/(?P<topic>[^/]+)"
    r"/partitions/(?P<partition>[0-9]{10})/records/(?P<offset>[0-9]{20})\.batch"
)
COMMIT = re.compile(
    r"clusters/(?P<cluster>[^/]+)/groups/consumers/(?P<group>.+)"
    r"/offsets/(?P<topic>[^/]+)/partitions/(?P<partition>[0-9]{10})\.json"
)

# (bucket, cluster, topic, partition); (bucket, cluster, topic); (bucket, cluster, group)
Partition = tuple[str, str, str, int]
Topic = tuple[str, str, str]
Group = tuple[str, str, str]


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    # Batches younger than this are kept whatever the groups read (0: retention off).
    retention_s: float = 60.0
    # A group that has not committed for this long no longer holds batches back.
    group_idle_s: float = 86_400.0

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    @property
    def every_s(self) -> float:
        """How often a pass runs: a quarter of the period, 1-30 s."""
        return min(30.0, max(1.0, self.retention_s / 4))


class Batch(msgspec.Struct, frozen=True):
    key: str
    partition: Partition
    base: int  # its first offset
    modified: datetime


class Commit(msgspec.Struct, frozen=True):
    group: Group
    partition: Partition
    offset: int  # the next offset the group reads
    modified: datetime


class Passed(msgspec.Struct, frozen=True):
    """A group past the group window whose unread records were deleted."""

    group: str
    topic: str
    partition: int
    committed: int
    log_start: int


class Plan(msgspec.Struct, frozen=True):
    delete: list[Batch]
    partitions: int  # partitions with something deleted
    passed: list[Passed]


class _Offset(msgspec.Struct):
    offset: int


def parse_batch(bucket: str, key: str, modified: datetime) -> Batch | None:
    m = RECORD.fullmatch(key)
    if m is None:
        return None
    partition = (bucket, m["cluster"], m["topic"], int(m["partition"]))
    return Batch(key, partition, int(m["offset"]), modified)


def parse_commit(bucket: str, key: str, modified: datetime, body: bytes) -> Commit | None:
    m = COMMIT.fullmatch(key)
    if m is None:
        return None
    try:
        offset = msgspec.json.decode(body, type=_Offset).offset
    except msgspec.DecodeError:
        offset = 0  # unreadable: hold everything back rather than guess
    group = (bucket, m["cluster"], m["group"])
    partition = (bucket, m["cluster"], m["topic"], int(m["partition"]))
    return Commit(group, partition, max(offset, 0), modified)


def plan(
    batches: list[Batch],
    commits: list[Commit],
    *,
    now: datetime,
    started: datetime,
    policy: Policy,
) -> Plan:
    """Which batch objects to delete (pure: the rules in the module's doc)."""
    horizon = now - timedelta(seconds=policy.retention_s)
    idle_since = now - timedelta(seconds=policy.group_idle_s)
    last: dict[Group, datetime] = {}
    offsets: dict[Group, dict[Partition, int]] = defaultdict(dict)
    for c in commits:
        last[c.group] = max(last.get(c.group, c.modified), c.modified)
        offsets[c.group][c.partition] = c.offset
    live = {g for g, at in last.items() if max(at, started) >= idle_since}
    readers: dict[Topic, list[Group]] = defaultdict(list)
    for g in live:
        for topic in {p[:3] for p in offsets[g]}:
            readers[topic].append(g)

    by_partition: dict[Partition, list[Batch]] = defaultdict(list)
    for b in batches:
        by_partition[b.partition].append(b)
    delete: list[Batch] = []
    passed: list[Passed] = []
    touched = 0
    stale = last.keys() - live
    for partition in sorted(by_partition):
        items = sorted(by_partition[partition], key=lambda b: b.base)
        groups = readers.get(partition[:3])
        if not groups:
            continue  # nobody reads it (dead letters): kept for whoever looks later
        floor = min(offsets[g].get(partition, 0) for g in groups)
        keep = 0  # the index of the first batch kept
        # Never the newest: its records end at the high watermark, unknown here.
        while keep < len(items) - 1:
            if items[keep].modified >= horizon or items[keep + 1].base > floor:
                break
            keep += 1
        if keep == 0:
            continue
        touched += 1
        delete += items[:keep]
        before, after = items[0].base, items[keep].base
        for g in stale:
            committed = offsets[g].get(partition)
            if committed is not None and before <= committed < after:
                passed.append(Passed(g[2], partition[2], partition[3], committed, after))
    return Plan(delete, touched, passed)


async def retention_pass(backend: Backend, policy: Policy, started: datetime) -> Plan:
    """Read the batch and commit objects' keys, delete what plan() chooses."""
    began = time.monotonic()
    now, rows = await backend.retention_rows()
    if not rows:
        return Plan([], 0, [])
    batches: list[Batch] = []
    commits: list[Commit] = []
    for r in rows:
        if r.body is None:
            if (b := parse_batch(r.bucket, r.key, r.modified)) is not None:
                batches.append(b)
        elif (c := parse_commit(r.bucket, r.key, r.modified, r.body)) is not None:
            commits.append(c)
    chosen = plan(batches, commits, now=now, started=started, policy=policy)
    by_bucket: dict[str, list[str]] = defaultdict(list)
    for b in chosen.delete:
        by_bucket[b.partition[0]].append(b.key)
    for bucket, bucket_keys in by_bucket.items():
        await backend.delete(bucket, bucket_keys)
    for p in chosen.passed:
        log.warning(
            "broker_retention_passed_group",
            group=p.group,
            topic=p.topic,
            partition=p.partition,
            committed=p.committed,
            log_start=p.log_start,
            hint="the group was idle past the group window; replay its read model",
        )
    if chosen.delete:
        log.info(
            "broker_retention",
            deleted=len(chosen.delete),
            partitions=chosen.partitions,
            kept=len(batches) - len(chosen.delete),
            seconds=round(time.monotonic() - began, 3),
        )
    return chosen


async def run_retention(
    backend: Backend,
    policy: Policy,
    stop: asyncio.Event,
    unavailable: tuple[type[BaseException], ...],
) -> None:
    """A pass every policy.every_s until stop; a failed pass is logged and
    the next one tries again."""
    # Only the groups' grace counts from it: a skew between this clock and
    # the database's shifts that grace, nothing else.
    started = datetime.now(UTC)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), policy.every_s)
        if stop.is_set():
            return
        try:
            await retention_pass(backend, policy, started)
        except unavailable as e:
            log.warning("broker_retention: database unavailable", error=str(e))
        except Exception:
            log.exception("broker_retention_failed")
