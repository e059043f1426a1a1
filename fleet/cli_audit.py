"""`edgefleet audit`: who changed what in the fleet (FleetControl.ListAudit; admin tokens only)."""
from __future__ import annotations

import argparse

from edgefleet.v1 import fleet_pb2

from .channel import add_connection_arguments
from .cli_common import format_time, print_json, time_arg
from .convert import timestamp


def cmd_audit(args) -> int:
    from .cli import _call, print_table

    request = fleet_pb2.ListAuditRequest(limit=args.limit)
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    response = _call(args, "ListAudit", request)
    entries = list(response.entries)
    if args.json:
        print_json(entries)
        return 0
    rows = [("TIME", "WHO", "ROLE", "CALL", "TARGET", "RESULT", "PARAMETERS")]
    for e in entries:
        rows.append((format_time(e.time.ToNanoseconds() / 1e9), e.token_name or e.token_id, e.role, e.call,
                     e.target or "-", "ok" if e.ok else e.error or "failed", e.parameters))
    print_table(rows)
    print(f"({len(entries)} entries)")
    if response.omitted:
        print(f"({response.omitted} older entries left out to keep the answer small: narrow --since or --limit)")
    return 0


def add_audit_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="who changed what: the controller's audit log (admin tokens)")
    add_connection_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
    p.add_argument("--since", type=time_arg("--since"), metavar="DURATION|TIME",
                   help="entries at or after this: a duration ago (30s, 10m, 2h, 7d) or an ISO time")
    p.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_audit)
