"""`edgefleet`: run the controller and operate the fleet."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

import grpc

from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from .convert import to_dict

logger = logging.getLogger("edgefleet")

DEFAULT_CONTROLLER = "127.0.0.1:50051"


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---- serve ----

async def _serve(args) -> int:
    from .server import Controller

    controller = Controller(args.db, args.listen, heartbeat_interval_s=args.heartbeat_interval)
    for key in args.enroll_key or ():
        controller.store.create_enroll_key("cli", key)
    port = await controller.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"edgefleet controller listening on {host}:{port} (db {args.db})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await controller.stop(grace=2.0)
    return 0


def cmd_serve(args) -> int:
    try:
        return asyncio.run(_serve(args))
    except OSError as err:
        raise CliError(str(err)) from err


def cmd_enroll_key_create(args) -> int:
    from .store import FleetStore

    store = FleetStore(args.db)
    try:
        print(store.create_enroll_key(args.name))
    finally:
        store.close()
    return 0


# ---- operator reads over FleetControl ----

def _call(args, method: str, request):
    channel = grpc.insecure_channel(args.controller)
    try:
        stub = fleet_pb2_grpc.FleetControlStub(channel)
        return getattr(stub, method)(request, timeout=args.timeout)
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"cannot reach the controller at {args.controller}: {err.details()}") from err
        raise CliError(f"{method}: {err.code().name}: {err.details()}") from err
    finally:
        channel.close()


def _age(ts) -> str:
    if not ts.seconds:
        return "never"
    return f"{max(0.0, time.time() - ts.ToNanoseconds() / 1e9):.0f}s ago"


def cmd_devices(args) -> int:
    response = _call(args, "ListDevices", fleet_pb2.ListDevicesRequest())
    if args.json:
        print(json.dumps([to_dict(d) for d in response.devices], indent=2))
        return 0
    rows = [("DEVICE", "STATUS", "HOSTNAME", "PLATFORM", "FPS", "INFER p50", "STORED", "LAST SEEN")]
    for d in response.devices:
        rows.append((
            d.device_id, fleet_pb2.DeviceStatus.Name(d.status), d.hostname, d.profile.platform or "?",
            f"{d.health.fps:.1f}", f"{d.health.inference_ms_p50:.1f} ms", str(d.detections_stored),
            _age(d.last_seen),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_detections(args) -> int:
    request = fleet_pb2.ListDetectionsRequest(
        device_id=args.device, stream_id=args.stream or "", limit=args.limit
    )
    response = _call(args, "ListDetections", request)
    if args.json:
        print(json.dumps({"total": response.total, "frames": [to_dict(f) for f in response.frames]}, indent=2))
        return 0
    for f in response.frames:
        labels = ", ".join(f"{d.label}#{d.track_id} {d.score:.2f}" for d in f.detections) or "-"
        print(f"seq {f.sequence:>6}  {f.stream_id}  frame {f.frame_index:>6}  {labels}")
    print(f"({len(response.frames)} of {response.total} stored records)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description="edgefleet fleet controller and operator CLI")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the fleet controller")
    p.add_argument("--listen", default="0.0.0.0:50051", help="HOST:PORT to bind (port 0 picks a free one)")
    p.add_argument("--db", type=Path, default=Path("var/fleet.db"), help="SQLite file for fleet state")
    p.add_argument("--heartbeat-interval", type=int, default=5, metavar="S",
                   help="seconds between agent heartbeats (status turns STALE after 3 missed)")
    p.add_argument("--enroll-key", action="append", metavar="KEY",
                   help="accept this enrollment key (repeatable); or create keys with `enroll-key create`")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("enroll-key", help="manage enrollment keys")
    ek = p.add_subparsers(dest="enroll_command", required=True)
    c = ek.add_parser("create", help="create a key and print it")
    c.add_argument("--db", type=Path, default=Path("var/fleet.db"))
    c.add_argument("--name", default="default", help="a label for the key (shown in the controller log)")
    c.set_defaults(func=cmd_enroll_key_create)

    for name, func, help_ in (
        ("devices", cmd_devices, "list enrolled devices"),
        ("detections", cmd_detections, "show a device's stored detections"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--controller", default=DEFAULT_CONTROLLER, metavar="HOST:PORT")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        if name == "detections":
            p.add_argument("--device", required=True, metavar="ID")
            p.add_argument("--stream", metavar="ID")
            p.add_argument("--limit", type=int, default=20)

    p = sub.add_parser("model", help="convert, export, build and verify model artifacts")
    from models.pipeline import add_subcommands

    add_subcommands(p.add_subparsers(dest="model_command", required=True))

    p = sub.add_parser("demo", help="controller + local agents on the sample videos, live status")
    p.add_argument("--agents", type=int, default=3, help="number of local agents (default 3)")
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds (0: until Ctrl-C)")
    p.add_argument("--samples", type=Path, default=Path("var/samples"), help="folder with vtest.avi / bikes.mp4")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="controller db and agent state")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except CliError as err:
        print(f"edgefleet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
