"""`edgefleet detections`: stored detections by device, selector, time and label; then, with --follow, live.

    edgefleet detections --device cam-07-9f1e2d --since 10m --label person
    edgefleet detections --select site=lab --format csv --since 2026-05-01T08:00 --until 2026-05-01T18:00
    edgefleet detections --select site=lab --label car --follow      # the recent ones, then each as it comes
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable

from edgefleet.v1 import fleet_pb2, types_pb2

from .channel import add_connection_arguments
from .cli_common import CliError, print_json, time_arg
from .convert import timestamp, to_json_dict

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("device_id", "stream_id", "sequence", "frame_index", "capture_time", "track_id", "class_id",
               "label", "score", "x1", "y1", "x2", "y2", "predicted")


def list_request(args) -> fleet_pb2.ListDetectionsRequest:
    request = fleet_pb2.ListDetectionsRequest(device_id=args.device or "", stream_id=args.stream or "",
                                              limit=args.limit, select=args.select or "", labels=args.label or [])
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    if args.until is not None:
        request.until.CopyFrom(timestamp(args.until))
    return request


def watch_request(args) -> fleet_pb2.WatchDetectionsRequest:
    return fleet_pb2.WatchDetectionsRequest(device_id=args.device or "", stream_id=args.stream or "",
                                            labels=args.label or [], select=args.select or "")


class Printer:
    """Frames as table lines, CSV rows (one per object) or JSON; `follow` makes JSON one frame a line."""

    def __init__(self, fmt: str, follow: bool, show_device: bool):
        self.fmt = fmt
        self.follow = follow
        self.show_device = show_device
        self.csv = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)

    def frames(self, frames: Iterable[types_pb2.FrameDetections]) -> None:
        for frame in frames:
            if self.csv is not None:
                self.csv.writerows(csv_rows(frame))
            elif self.fmt == "json":
                print(json.dumps(to_json_dict(frame)))
            else:
                print(table_line(frame, self.show_device))
        sys.stdout.flush()

    def listing(self, response: fleet_pb2.ListDetectionsResponse) -> None:
        if self.fmt == "json" and not self.follow:
            print_json({"total": response.total, "frames": list(response.frames)})
            return
        self.frames(response.frames)
        if self.fmt == "table":
            print(f"({len(response.frames)} of {response.total} stored records)")
        if response.omitted:
            print(f"({response.omitted} records left out to keep the answer small: narrow --since/--until or"
                  " --limit)", file=sys.stderr)


def table_line(frame: types_pb2.FrameDetections, show_device: bool) -> str:
    labels = ", ".join(f"{d.label}#{d.track_id} {d.score:.2f}" for d in frame.detections) or "-"
    device = f"{frame.device_id}  " if show_device else ""
    return f"{device}seq {frame.sequence:>6}  {frame.stream_id}  frame {frame.frame_index:>6}  {labels}"


def csv_rows(frame: types_pb2.FrameDetections) -> list[tuple]:
    """One row per object; a frame without objects is one row with the object columns empty."""
    when = frame.capture_time.ToJsonString() if frame.HasField("capture_time") else ""
    head = (frame.device_id, frame.stream_id, frame.sequence, frame.frame_index, when)
    if not frame.detections:
        return [head + ("",) * (len(CSV_COLUMNS) - len(head))]
    return [head + (d.track_id, d.class_id, d.label, f"{d.score:.4f}", f"{d.box.x1:.1f}", f"{d.box.y1:.1f}",
                    f"{d.box.x2:.1f}", f"{d.box.y2:.1f}", int(d.predicted)) for d in frame.detections]


def cmd_detections(args) -> int:
    from .cli import control_stub

    if args.json:
        args.format = "json"
    if args.follow and args.until is not None:
        raise CliError("--follow shows detections as they come: it cannot take --until")
    printer = Printer(args.format, args.follow, show_device=not args.device)
    with control_stub(args, "ListDetections") as stub:
        watch = stub.WatchDetections(watch_request(args)) if args.follow else None  # before the listing: no gap
        try:
            response = stub.ListDetections(list_request(args), timeout=args.timeout)
            printer.listing(response)
            if watch is not None:
                printer.frames(_unseen(watch, response.frames))
        except KeyboardInterrupt:  # how a --follow ends
            return 0
        finally:
            if watch is not None:
                watch.cancel()
    return 0


def _unseen(watch, listed: Iterable[types_pb2.FrameDetections]) -> Iterable[types_pb2.FrameDetections]:
    """The watched frames the listing did not already print (the watch opened before the listing)."""
    last: dict[str, int] = {}
    for frame in listed:
        last[frame.device_id] = max(last.get(frame.device_id, 0), frame.sequence)
    for reply in watch:
        if reply.dropped:
            print(f"(this watcher fell behind: {reply.dropped} frames dropped)", file=sys.stderr)
        if reply.frame.sequence > last.get(reply.frame.device_id, 0):
            yield reply.frame


def add_detections_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detections", help="stored detections by device, selector, time and label; --follow: live")
    add_connection_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
    p.add_argument("--device", metavar="ID", help="one device (default: every device, or --select's)")
    p.add_argument("--select", metavar="EXPR", help="the devices whose labels match, e.g. 'site=lab,env!=prod'")
    p.add_argument("--stream", metavar="ID")
    p.add_argument("--since", type=time_arg("--since"), metavar="DURATION|TIME",
                   help="captured at or after: a duration ago (30s, 10m, 2h, 7d) or an ISO time")
    p.add_argument("--until", type=time_arg("--until"), metavar="DURATION|TIME", help="captured before this")
    p.add_argument("--label", action="append", metavar="LABEL",
                   help="only frames with this class label, and only those objects (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="the newest N records (default 20)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table, json, or csv (one row per object); with --follow, json is one frame a line")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--follow", action="store_true",
                   help="after the stored ones, print each new frame as it arrives, until interrupted")
    p.set_defaults(func=cmd_detections)
