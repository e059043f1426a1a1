"""`edgefleet objects` and `counts` (and, from fleet.cli_pictures, `snapshot` and `frame`).

    edgefleet objects --device cam-07-9f1e2d --since 10m --label person
    edgefleet objects --select site=lab --line door --all --format csv > crossed-door.csv
    edgefleet counts --since today --group-by label:site
    edgefleet counts --device cam-07-9f1e2d --line door --by hour --format csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator

from edgefleet.v1 import fleet_pb2, types_pb2

from .channel import add_connection_arguments
from .cli_common import CliError, format_time, print_json, time_arg
from .convert import timestamp, to_json_dict

FORMATS = ("table", "json", "csv")
OBJECT_CSV = ("object_id", "device_id", "stream_id", "track_id", "label", "class_id", "first_seen", "last_seen",
              "best_score", "x1", "y1", "x2", "y2", "frames", "ended", "has_snapshot", "zones", "crossings")
COUNT_CSV = ("start", "device_id", "stream_id", "group", "kind", "name", "label", "direction", "count")


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def _iso(ts) -> str:
    return ts.ToJsonString() if ts.seconds or ts.nanos else ""


def _set_times(request, args) -> None:
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    if args.until is not None:
        request.until.CopyFrom(timestamp(args.until))
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise CliError(f"--until ({format_time(args.until)}) must be after --since ({format_time(args.since)})")


# ---- objects ----

def objects_request(args) -> fleet_pb2.ListObjectsRequest:
    if args.limit < 1 or args.limit > 1000:
        raise CliError(f"--limit must be within 1..1000 (a page; --all follows the pages), got {args.limit}")
    request = fleet_pb2.ListObjectsRequest(
        device_id=args.device or "", select=args.select or "", stream_id=args.stream or "", label=args.label or "",
        zone=args.zone or "", line=args.line or "", active=args.active, limit=args.limit)
    _set_times(request, args)
    return request


def object_pages(stub, request: fleet_pb2.ListObjectsRequest, follow: bool,
                 timeout: float) -> Iterator[fleet_pb2.ListObjectsResponse]:
    """The first page, and with `follow` every page after it."""
    while True:
        page = stub.ListObjects(request, timeout=timeout)
        yield page
        if not follow or not page.next_page_token:
            return
        request.page_token = page.next_page_token


def object_row(o: types_pb2.TrackedObject, show_device: bool) -> tuple[str, ...]:
    crossings = ", ".join(f"{c.line} {c.direction}" for c in o.crossings)
    device = (o.device_id,) if show_device else ()
    return (o.object_id, *device, o.stream_id, o.label, str(o.track_id), format_time(_seconds(o.first_seen)),
            format_time(_seconds(o.last_seen)), f"{o.best_score:.2f}", str(o.frames), ", ".join(o.zones) or "-",
            crossings or "-", "ended" if o.ended else "active")


def object_csv_row(o: types_pb2.TrackedObject) -> tuple:
    b = o.best_box
    return (o.object_id, o.device_id, o.stream_id, o.track_id, o.label, o.class_id, _iso(o.first_seen),
            _iso(o.last_seen), f"{o.best_score:.4f}", f"{b.x1:.1f}", f"{b.y1:.1f}", f"{b.x2:.1f}", f"{b.y2:.1f}",
            o.frames, int(o.ended), int(o.has_snapshot), ";".join(o.zones),
            ";".join(f"{c.line}:{c.direction}" for c in o.crossings))


def print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_objects(args) -> int:
    from .cli import control_stub

    if args.json:
        args.format = "json"
    request = objects_request(args)
    show_device = not args.device
    objects: list[types_pb2.TrackedObject] = []
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.format == "csv" else None
    if writer is not None:
        writer.writerow(OBJECT_CSV)
    with control_stub(args, "ListObjects") as stub:
        token = ""
        for page in object_pages(stub, request, args.all, args.timeout):
            token = page.next_page_token
            if writer is not None:
                writer.writerows(object_csv_row(o) for o in page.objects)
            else:
                objects.extend(page.objects)
    if args.format == "json":
        print_json({"objects": objects, "next_page_token": token})
    elif args.format == "table":
        head = ("OBJECT", *(("DEVICE",) if show_device else ()), "STREAM", "LABEL", "TRACK", "FIRST SEEN",
                "LAST SEEN", "SCORE", "FRAMES", "ZONES", "CROSSED", "STATE")
        print_rows([head, *(object_row(o, show_device) for o in objects)])
        more = "; more: --all, or narrow --since/--until" if token else ""
        print(f"({len(objects)} object{'' if len(objects) == 1 else 's'}{more})")
    return 0


# ---- counts ----

def counts_request(args) -> fleet_pb2.CountObjectsRequest:
    kind, name = ("zone", args.zone) if args.zone else ("line", args.line) if args.line else (args.kind or "", "")
    group_by = [g.strip() for text in args.group_by or () for g in text.split(",") if g.strip()]
    request = fleet_pb2.CountObjectsRequest(
        device_id=args.device or "", select=args.select or "", stream_id=args.stream or "", kind=kind, name=name,
        label=args.label or "", direction=args.direction or "", bucket=args.by or "", group_by=group_by)
    _set_times(request, args)
    return request


def count_rows(response: fleet_pb2.CountObjectsResponse, request: fleet_pb2.CountObjectsRequest) -> list[tuple]:
    """The table: a column for what is bucketed or grouped, then what was counted, and a total line."""
    label_key = next((g.split(":", 1)[1] for g in request.group_by if g.startswith("label:")), "")
    columns = [("START", lambda b: format_time(_seconds(b.start)) if b.HasField("start") else "", bool(request.bucket)),
               ("DEVICE", lambda b: b.device_id, "device" in request.group_by),
               ("STREAM", lambda b: b.stream_id, "stream" in request.group_by),
               (label_key.upper() or "GROUP", lambda b: b.group or "-", bool(label_key)),
               ("KIND", lambda b: b.kind, True), ("NAME", lambda b: b.name, True), ("LABEL", lambda b: b.label, True),
               ("DIRECTION", lambda b: b.direction, True), ("COUNT", lambda b: str(b.count), True)]
    shown = [(head, cell) for head, cell, on in columns if on]
    rows: list[tuple] = [tuple(head for head, _ in shown)]
    rows += [tuple(cell(b) for _, cell in shown) for b in response.buckets]
    rows.append(("TOTAL", *[""] * (len(shown) - 2), str(response.total)))
    return rows


def cmd_counts(args) -> int:
    from .cli import control_stub

    if args.json:
        args.format = "json"
    request = counts_request(args)
    with control_stub(args, "CountObjects") as stub:
        response = stub.CountObjects(request, timeout=args.timeout)
    if args.format == "json":
        print_json(response)
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(COUNT_CSV)
        for b in response.buckets:
            data = to_json_dict(b)
            writer.writerow([_iso(b.start), *(data[k] for k in COUNT_CSV[1:])])
    else:
        print_rows(count_rows(response, request))
    return 0


# ---- arguments ----

def _common(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--device", metavar="ID", help="one device (default: every device, or --select's)")
    which.add_argument("--select", metavar="EXPR", help="the devices whose labels match, e.g. 'site=lab,env!=prod'")
    p.add_argument("--stream", metavar="ID")
    p.add_argument("--label", metavar="LABEL", help="one class label (person, car, ...)")
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")
    p.add_argument("--json", action="store_true", help="the same as --format json")


def _add_objects(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("objects", help="tracked objects, newest first: by device, stream, label, zone, line, time")
    _common(p)
    p.add_argument("--zone", metavar="NAME", help="objects that entered this zone")
    p.add_argument("--line", metavar="NAME", help="objects that crossed this line")
    p.add_argument("--since", type=time_arg("--since"), metavar="DURATION|TIME",
                   help="last seen at or after: a duration ago (30s, 10m, 2h, 7d), today, or an ISO time")
    p.add_argument("--until", type=time_arg("--until"), metavar="DURATION|TIME", help="first seen before this")
    p.add_argument("--active", action="store_true", help="only objects whose track still lives")
    p.add_argument("--limit", type=int, default=50, help="objects per page (default 50, at most 1000)")
    p.add_argument("--all", action="store_true", help="follow the pages to the last")
    p.set_defaults(func=cmd_objects)


def _add_counts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("counts", help="zone entries and line crossings, by time bucket, device, stream or label")
    _common(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--zone", metavar="NAME", help="entries of this zone")
    what.add_argument("--line", metavar="NAME", help="crossings of this line")
    what.add_argument("--kind", choices=("zone", "line"), help="every zone's or every line's")
    p.add_argument("--direction", choices=("enter", "in", "out"), help="zones count enter; lines in and out")
    p.add_argument("--since", type=time_arg("--since"), default="today", metavar="today|DURATION|TIME",
                   help="from: today (local midnight, the default), a duration ago (10m, 2h, 7d) or an ISO time")
    p.add_argument("--until", type=time_arg("--until"), metavar="DURATION|TIME", help="to (default: now)")
    p.add_argument("--by", choices=("minute", "hour", "day"), help="one row per bucket (UTC); default: one for all")
    p.add_argument("--group-by", action="append", metavar="device,stream,label:KEY",
                   help="rows per device, per stream, and/or per value of a device label (label:site)")
    p.set_defaults(func=cmd_counts)


def add_object_commands(sub: argparse._SubParsersAction) -> None:
    """Register the commands on the `edgefleet` parser."""
    from .cli_pictures import add_picture_commands

    _add_objects(sub)
    _add_counts(sub)
    add_picture_commands(sub)
