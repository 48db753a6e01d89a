"""`cloud-engine history`, `state` and `audit export`: reading the audit trail.

They use the configured database (embedded by default, like `up`) and never
start a broker. Bad input (an id that is not a UUID, a time that is not ISO
8601) exits 2 before anything is started; an unknown aggregate exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import msgspec

from cloud_engine.engine import integrity
from cloud_engine.engine.errors import NotFound, Validation
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.settings import Settings
from cloud_engine.projections.history import HistoryEntry, export, history, state_at, state_view
from cloud_engine.runner.components import start_infrastructure

COMMANDS = frozenset({"history", "state", "audit"})


def aggregate_id_arg(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an aggregate id (a UUID): {text!r}") from None


def time_arg(text: str) -> datetime:
    """ISO 8601; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2025-01-31T12:00:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def point_arg(text: str) -> int | datetime:
    """A version number (an integer) or an ISO 8601 time."""
    if re.fullmatch(r"\s*\d+\s*", text):
        return int(text)
    try:
        return time_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a version number or an ISO 8601 time: {text!r}"
        ) from None


def register(sub: Any) -> None:
    """Add the subcommands to the `cloud-engine` parser's subparsers."""
    show = sub.add_parser("history", help="every event of one aggregate: when, who, why, what")
    show.add_argument("aggregate_id", type=aggregate_id_arg, metavar="AGGREGATE_ID")
    show.add_argument("--json", action="store_true", help="JSON lines, one event each")
    state = sub.add_parser("state", help="an aggregate's state at a version or a time")
    state.add_argument("aggregate_id", type=aggregate_id_arg, metavar="AGGREGATE_ID")
    state.add_argument(
        "--at",
        required=True,
        type=point_arg,
        metavar="TIME|VERSION",
        help="a version number, or an ISO 8601 time (without offset: UTC)",
    )
    audit = sub.add_parser("audit", help="the audit trail of every aggregate")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    dump = actions.add_parser("export", help="events recorded in [--from, --to) as JSON lines")
    dump.add_argument("--from", dest="start", required=True, type=time_arg, metavar="TIME")
    dump.add_argument("--to", dest="end", required=True, type=time_arg, metavar="TIME")
    dump.add_argument("--output", "-o", type=Path, metavar="FILE", help="default: stdout")
    check = actions.add_parser(
        "verify", help="recompute the hash chains over the whole log; name every broken event"
    )
    check.add_argument(
        "--head",
        type=head_arg,
        metavar="POSITION:HASH",
        help="a head printed earlier by `audit head`: also check the log still holds it",
    )
    check.add_argument("--json", action="store_true", help="findings as JSON lines")
    top = actions.add_parser("head", help="the newest position and its chain hash, to keep")
    for parser in (show, state, dump, check, top):
        parser.add_argument("--data-dir", help="overrides CLOUD_ENGINE_DATA_DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "audit" and args.audit_command == "export" and args.start >= args.end:
        return _fail("invalid", "--from must be before --to", 2)
    infra = start_infrastructure(settings, broker=False)
    try:
        store = EventStore(infra.target, pool_size=2)
        try:
            return _run(args, store)
        except NotFound as e:
            # The message says "... not found ...".
            print(f"cloud-engine: {e}", file=sys.stderr)
            return 1
        except Validation as e:
            return _fail("invalid", str(e), 2)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        finally:
            store.close()
    finally:
        infra.stop()


def _fail(kind: str, message: str, code: int) -> int:
    print(f"cloud-engine: {kind}: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace, store: EventStore) -> int:
    if args.command == "history":
        entries = history(store, args.aggregate_id)
        if args.json:
            sys.stdout.buffer.writelines(msgspec.json.encode(e) + b"\n" for e in entries)
        else:
            print_table(entries, sys.stdout)
        sys.stdout.flush()
        return 0
    if args.command == "state":
        point = args.at
        if isinstance(point, int):
            aggregate = state_at(store, args.aggregate_id, version=point)
        else:
            aggregate = state_at(store, args.aggregate_id, at=point)
        text = msgspec.json.format(msgspec.json.encode(state_view(aggregate)), indent=2)
        sys.stdout.buffer.write(text + b"\n")
        sys.stdout.flush()
        return 0
    if args.audit_command == "verify":
        return _verify(store, args.head, args.json)
    if args.audit_command == "head":
        with store.recorder.datastore.get_connection() as conn:
            current = integrity.head(conn, store.target.schema, store.recorder.events_table_name)
        print(current if current is not None else "empty log")
        return 0
    lines = export(store, args.start, args.end)
    if args.output is None:
        for line in lines:
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        return 0
    return _export_to(args.output, lines)


def _verify(store: EventStore, kept: integrity.Head | None, as_json: bool) -> int:
    table = store.recorder.events_table_name
    with store.recorder.datastore.get_connection() as conn:
        report = integrity.verify(conn, store.target.schema, table)
        findings = list(report.findings)
        if kept is not None:
            finding = integrity.check_head(conn, store.target.schema, table, kept)
            if finding is not None:
                findings.append(finding)
    for f in findings:
        if as_json:
            sys.stdout.buffer.write(msgspec.json.encode(f) + b"\n")
        else:
            print(f"position {f.position}  {f.aggregate_id} v{f.version}: {f.problem}")
    sys.stdout.flush()
    verdict = "intact" if not findings else f"{len(findings)} problem(s) found"
    print(f"checked {report.checked} events: {verdict}", file=sys.stderr)
    return 0 if not findings else 1


def head_arg(text: str) -> integrity.Head:
    try:
        return integrity.Head.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _export_to(path: Path, lines: Iterator[bytes]) -> int:
    """Written next to the file and renamed at the end: an interrupted export
    never leaves a file that looks complete."""
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with open(partial, "wb") as out:
            for line in lines:
                out.write(line)
                count += 1
        os.replace(partial, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            partial.unlink()
        return _fail("cannot write", f"{path}: {e.strerror or e}", 1)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    print(f"cloud-engine: exported {count} events to {path}", file=sys.stderr)
    return 0


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def print_table(entries: list[HistoryEntry], out: TextIO) -> None:
    if entries:
        print(f"{entries[0].aggregate_type} {entries[0].aggregate_id}", file=out)
    header = ("VERSION", "TIME", "ACTOR", "REQUEST ID", "CORRELATION ID", "SUMMARY")
    rows = [
        (
            str(e.version),
            _time(e.time),
            e.actor or "-",
            e.request_id or "-",
            e.correlation_id or "-",
            e.summary,
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)
