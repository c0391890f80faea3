"""``sandbar audit``: print the event log, replay a workspace at a moment, rebuild views.

``log`` and ``replay`` read through the audit index (projections/audit_index.py): the
filters are SQL, the events stream from a server-side cursor and are printed as they
come, so memory stays flat and the time follows what is printed, not the log's size."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from application.audit import USER_FIELDS, AuditLog, Entry, Filter, Usernames
from infrastructure.settings import Settings
from interfaces.cli.output import Progress, stream_table, table


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time; use RFC 3339, e.g. 2026-11-28T18:00:00Z"
        ) from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is outside the years 1 to 9999 in UTC"
        ) from None


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def _open() -> Any:
    from interfaces.event_log import open_event_log

    return open_event_log(Settings.from_env())


def _audit(log: Any) -> AuditLog | None:
    """The audit log, if its index holds the whole log (else a word on stderr)."""
    from projections.audit_reads import AuditReads

    audit = AuditLog(log, AuditReads(log.recorder.datastore))
    if audit.caught_up():
        return audit
    print(
        "sandbar: the views and the audit index are being rebuilt after an upgrade;"
        " `sandbar serve` rebuilds them in the background (its /readyz answers 200 when"
        " done), or run `sandbar audit rebuild`",
        file=sys.stderr,
    )
    return None


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _details(entry: Entry, names: Usernames) -> str:
    parts = []
    for key, value in entry.fields.items():
        text = str(value)
        if key in USER_FIELDS:
            text = names.get(text, text) or text
            key = key.removesuffix("_id")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _log(args: argparse.Namespace) -> int:
    log = _open()
    try:
        return _print_log(log, args)
    finally:
        log.close()


def _print_log(log: Any, args: argparse.Namespace) -> int:
    audit = _audit(log)
    if audit is None:
        return 1
    names = audit.names  # the names of each page's users, known as it is handed on
    user_id = None
    if args.user:
        try:
            user_id = UUID(args.user)
        except ValueError:
            user_id = audit.user_named(args.user)
            if user_id is None:
                print(f"sandbar: no user is named {args.user!r}", file=sys.stderr)
                return 2
    where = Filter(workspace_id=args.workspace, user_id=user_id, since=args.since, until=args.until)
    entries = audit.entries(where)
    if args.json:
        out = sys.stdout.buffer
        for entry in entries:
            record = {
                "position": entry.position,
                "time": _stamp(entry.time),
                "actor": entry.actor,
                "actor_name": names.get(entry.actor),
                "event": entry.event,
                "aggregate_id": str(entry.aggregate_id),
                "workspace_id": str(entry.workspace_id) if entry.workspace_id else None,
                "fields": entry.fields,
            }
            out.write(orjson.dumps(record, default=str) + b"\n")
        return 0
    rows = (
        (
            entry.position,
            _stamp(entry.time),
            names.get(entry.actor, entry.actor),
            entry.event,
            str(entry.aggregate_id)[:8],
            _details(entry, names),
        )
        for entry in entries
    )
    stream_table(["#", "TIME", "ACTOR", "EVENT", "AGGREGATE", "DETAILS"], rows)
    return 0


def _replay(args: argparse.Namespace) -> int:
    log = _open()
    try:
        audit = _audit(log)
        if audit is None:
            return 1
        snap = audit.replay(args.workspace, args.at)
    finally:
        log.close()
    if snap.workspace is None:
        print(f"workspace {args.workspace} did not exist at {_stamp(args.at)}")
        return 1
    state = "deleted" if snap.workspace.deleted else "live"
    print(f"workspace {snap.workspace.name!r} ({args.workspace}) at {_stamp(args.at)}: {state}")
    print(f"\nmembers ({len(snap.members)})")
    table(["USERNAME", "ROLE", "USER ID"], [(n, m.role, m.user_id) for m, n in snap.members])
    print(f"\nsandboxes ({len(snap.sandboxes)})")
    table(
        ["NAME", "TYPE", "KIND", "STATUS", "SANDBOX ID"],
        [(s.name, s.type, s.kind, s.status, s.id) for s in snap.sandboxes],
    )
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    log = _open()
    view = log.recorder.read_model
    report = view.rebuild(log.mapper.to_domain_event, progress=Progress("replaying"))
    log.close()
    print(
        f"replayed {report.events:,} events in {report.seconds:.2f} s "
        f"({report.events_per_second:,.0f} events/s)"
    )
    table(
        ["VIEW", "ROWS BEFORE", "ROWS AFTER", "SAME"],
        [
            (
                t,
                report.rows_before[t],
                report.rows_after[t],
                "no" if t in report.differing_tables else "yes",
            )
            for t in report.rows_before
        ],
    )
    if not report.was_ready:
        print("the views were being rebuilt after an upgrade: they are now whole")
        return 0
    if report.identical:
        print("the rebuilt views equal the ones they replaced")
        return 0
    print(
        "the rebuilt views differ from the ones they replaced: "
        + ", ".join(report.differing_tables)
    )
    return 1


def add_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="read the audit log (the event log)")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    log = commands.add_parser("log", help="print the event log in order")
    log.add_argument("--workspace", type=_uuid, help="only this workspace's events")
    log.add_argument("--user", help="only events by or about this user (id or username)")
    log.add_argument("--since", type=_time, help="from this time (RFC 3339)")
    log.add_argument("--until", type=_time, help="up to this time (RFC 3339)")
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.set_defaults(run=_log)

    replay = commands.add_parser("replay", help="a workspace as it was at a moment")
    replay.add_argument("--workspace", type=_uuid, required=True)
    replay.add_argument("--at", type=_time, required=True, help="the moment (RFC 3339)")
    replay.set_defaults(run=_replay)

    rebuild = commands.add_parser("rebuild", help="drop and rebuild every view from the log")
    rebuild.set_defaults(run=_rebuild)
