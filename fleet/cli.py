"""`edgefleet`: run the controller and operate the fleet."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import grpc

from edgefleet.common.addresses import host_port_arg
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from .auth import DEFAULT_ACCESS, Access
from .channel import add_connection_arguments, open_channel
from .cli_common import CliError, db_arg, existing_db, print_json, quiet_broken_pipe
from .connect_errors import explain_unavailable
from .errors import FleetError
from .tls import ClientTLS, ServerTLS

logger = logging.getLogger("edgefleet")



def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---- serve ----

async def _serve(args) -> int:
    from .cli_rollouts import rollout_options
    from .server import Controller

    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise CliError("TLS needs both --tls-cert and --tls-key (and --tls-client-ca for mutual TLS)")
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)
    from .retention import RetentionPolicy

    controller = Controller(
        args.db, args.listen, heartbeat_interval_s=args.heartbeat_interval,
        stale_after_s=args.stale_after, offline_after_s=args.offline_after, tls=tls,
        mqtt=_bridge_config(args), metrics_listen=args.metrics_listen,
        rollout_options=rollout_options(args),
        retention=RetentionPolicy(detections_days=args.retention_days, health_days=args.health_retention_days,
                                  objects_days=args.objects_retention_days,
                                  snapshots_days=args.snapshot_retention_days),
        store_frames=args.store_frames,
    )
    for key in args.enroll_key or ():
        controller.store.create_enroll_key("cli", key)
    port = await controller.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"edgefleet controller listening on {host}:{port} (db {args.db})", flush=True)
    if controller.metrics_port is not None:
        metrics_host = args.metrics_listen.rsplit(":", 1)[0]
        print(f"edgefleet metrics on http://{metrics_host}:{controller.metrics_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await controller.stop(grace=2.0)
    return 0


def _bridge_config(args):
    """serve's MQTT bridge settings (None without --mqtt); a setting that cannot work is a CliError."""
    from .mqtt_bridge import bridge_config

    try:
        return bridge_config(args)
    except ValueError as err:  # MqttSettingsError too
        raise CliError(str(err)) from err


def tune_gc_for_serving() -> None:
    """Move what start-up built out of the collector's way and collect young objects less often.

    The controller makes short-lived objects at a high rate (a protobuf and a record per frame);
    with the default thresholds full collections of everything import and start-up left behind
    held the GIL for up to half a second at 20,000 detections/s, stalling the store thread and
    every ack behind it (scripts/bench/fleet.py: p99 6 s before, 0.3 s after)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(14_000, 10, 10)
    gc.callbacks.append(_log_long_collections)


_gc_started = 0.0


def _log_long_collections(phase: str, info: dict) -> None:
    """A collection that held the GIL long enough to delay acks is worth a line in the log."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    held = time.perf_counter() - _gc_started
    if held > 0.1:
        logger.warning("garbage collection (generation %d) held the controller for %.0f ms, %d collected",
                       info["generation"], held * 1000, info["collected"])


def cmd_serve(args) -> int:
    tune_gc_for_serving()
    try:
        return asyncio.run(_serve(args))
    except (OSError, FleetError) as err:
        raise CliError(str(err)) from err


# ---- secrets, straight in the controller's database (run on the controller host) ----

def _with_store(args, action):
    from .async_store import open_store

    try:
        store = open_store(existing_db(args.db, args.create))
    except (OSError, RuntimeError, FleetError) as err:  # PostgreSQL away, psycopg missing, a newer schema
        raise CliError(str(err)) from err
    try:
        return action(store)
    except FleetError as err:
        raise CliError(str(err)) from err
    finally:
        store.close()


def _print_secrets(records, as_json: bool, roles: bool = False) -> None:
    if as_json:
        print(json.dumps([{k: v for k, v in r.__dict__.items() if roles or k != "role"} for r in records], indent=2))
        return
    role = f"{'ROLE':<8}  " if roles else ""
    print(f"{'ID':<12}  {'NAME':<16}  {role}{'CREATED':<19}  STATE")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        role = f"{r.role:<8}  " if roles else ""
        print(f"{r.id:<12}  {r.name:<16}  {role}{created:<19}  {'revoked' if r.revoked else 'active'}")


def cmd_enroll_key_create(args) -> int:
    print(_with_store(args, lambda store: store.create_enroll_key(args.name)))
    return 0


def cmd_enroll_key_revoke(args) -> int:
    record = _with_store(args, lambda store: store.revoke_enroll_key(args.key))
    print(f"revoked enrollment key {record.id} ({record.name})")
    return 0


def cmd_enroll_key_list(args) -> int:
    _print_secrets(_with_store(args, lambda store: store.list_enroll_keys()), args.json)
    return 0


def cmd_operator_token_create(args) -> int:
    access = Access.parse(args.role)
    token = _with_store(args, lambda store: store.create_operator_token(args.name, access))
    print(token)
    print(f"a {access.label} token; store it now: only its hash is kept; use it as --token or EDGEFLEET_TOKEN",
          file=sys.stderr)
    return 0


def cmd_operator_token_revoke(args) -> int:
    record = _with_store(args, lambda store: store.revoke_operator_token(args.token))
    print(f"revoked operator token {record.id} ({record.name})")
    return 0


def cmd_operator_token_list(args) -> int:
    _print_secrets(_with_store(args, lambda store: store.list_operator_tokens()), args.json, roles=True)
    return 0


# ---- operator reads over FleetControl ----

@contextlib.contextmanager
def control_stub(args, what: str):
    """A FleetControl stub for the command's --controller/--token/TLS flags; RPC errors become CliErrors."""
    if not args.token:
        raise CliError("no operator token: pass --token or set EDGEFLEET_TOKEN "
                       "(made by `edgefleet operator-token create`)")
    tls = None
    try:
        if args.tls_ca or args.tls_cert or args.tls_key:
            tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key)
        with open_channel(args.controller, token=args.token, tls=tls) as channel:
            yield fleet_pb2_grpc.FleetControlStub(channel)
    except FleetError as err:
        raise CliError(str(err)) from err
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = explain_unavailable(args.controller, err.details() or "", tls)
            raise CliError(f"cannot reach the controller at {args.controller}: {why}") from err
        raise CliError(f"{what}: {err.code().name}: {err.details()}") from err


def _call(args, method: str, request):
    with control_stub(args, method) as stub:
        return getattr(stub, method)(request, timeout=args.timeout)


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Rows of cells (the first the header) in columns as wide as their widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _age(ts) -> str:
    if not ts.seconds:
        return "never"
    return f"{max(0.0, time.time() - ts.ToNanoseconds() / 1e9):.0f}s ago"


def cmd_devices(args) -> int:
    from .cli_devices import labels_text, select_text

    response = _call(args, "ListDevices", fleet_pb2.ListDevicesRequest(select=select_text(args)))
    if args.json:
        print_json(list(response.devices))
        return 0
    rows = [("DEVICE", "STATUS", "HOSTNAME", "PLATFORM", "FPS", "INFER p50", "STORED", "LAST SEEN", "LABELS")]
    for d in response.devices:
        rows.append((
            d.device_id, "REVOKED" if d.revoked else fleet_pb2.DeviceStatus.Name(d.status), d.hostname,
            d.profile.platform or "?",
            f"{d.health.fps:.1f}", f"{d.health.inference_ms_p50:.1f} ms", str(d.detections_stored),
            _age(d.last_seen), labels_text(d),
        ))
    print_table(rows)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description="edgefleet fleet controller and operator CLI")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    _add_secret_parsers(sub)
    _add_query_parsers(sub)
    from .cli_audit import add_audit_command
    from .cli_detect import add_detect_command
    from .cli_objects import add_object_commands

    add_audit_command(sub)
    add_detect_command(sub)
    add_object_commands(sub)

    from .cli_config import add_config_commands
    from .cli_devices import add_device_commands
    from .cli_rollouts import add_rollout_commands

    add_rollout_commands(sub)
    add_config_commands(add_device_commands(sub))

    p = sub.add_parser("model", help="convert, export, build and verify model artifacts")
    from edgefleet.models.pipeline import add_subcommands

    add_subcommands(p.add_subparsers(dest="model_command", required=True))

    for command in entry_points(group="edgefleet.commands"):  # e.g. `tui`, which lives outside fleet/
        command.load()(sub)

    _add_demo_parser(sub)
    return parser


def _frames_policy_arg(text: str):
    """`--store-frames`' argparse type: a FramePolicy, or an error naming the flag and the value."""
    from .object_rows import FramePolicy

    try:
        return FramePolicy.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from .cli_rollouts import add_serve_arguments
    from .mqtt_bridge import add_bridge_arguments
    from .object_rows import FramePolicy
    from .retention import RetentionPolicy, days_arg

    p = sub.add_parser("serve", help="run the fleet controller")
    p.add_argument("--listen", default="0.0.0.0:50051", help="HOST:PORT to bind (port 0 picks a free one)")
    db_arg(p)
    p.add_argument("--heartbeat-interval", type=int, default=5, metavar="S",
                   help="seconds between agent heartbeats")
    p.add_argument("--stale-after", type=float, metavar="S",
                   help="a device whose last message is older is STALE (default 3 heartbeat intervals)")
    p.add_argument("--offline-after", type=float, metavar="S",
                   help="a device whose last message is older is OFFLINE (default 10 heartbeat intervals)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate (chain)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                   help="mutual TLS: clients must present a certificate signed by this CA")
    p.add_argument("--enroll-key", action="append", metavar="KEY",
                   help="accept this enrollment key (repeatable); or create keys with `enroll-key create`")
    add_bridge_arguments(p)
    p.add_argument("--metrics-listen", type=host_port_arg("--metrics-listen", allow_port_zero=True, as_text=True),
                   metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)")
    p.add_argument("--store-frames", type=_frames_policy_arg, default=FramePolicy(), metavar="all|none|sample:N",
                   help="which frames to keep as detection rows: all (default), none (objects, counts and snapshots "
                   "only; frames are still acked and watched), or sample:N (frames whose index is a multiple of N)")
    p.add_argument("--retention-days", type=days_arg("--retention-days"), default=RetentionPolicy.detections_days,
                   metavar="DAYS", help="delete detections and events received more than DAYS ago, checked hourly "
                   f"(default {RetentionPolicy.detections_days}; 0 keeps them forever)")
    p.add_argument("--objects-retention-days", type=days_arg("--objects-retention-days"),
                   default=RetentionPolicy.objects_days, metavar="DAYS",
                   help="delete objects last seen, and counts of minutes, more than DAYS ago "
                   f"(default {RetentionPolicy.objects_days}; 0 keeps them forever)")
    p.add_argument("--snapshot-retention-days", type=days_arg("--snapshot-retention-days"),
                   default=RetentionPolicy.snapshots_days, metavar="DAYS",
                   help="delete object snapshots taken more than DAYS ago, never later than their objects "
                   f"(default {RetentionPolicy.snapshots_days}; 0: as long as the objects)")
    p.add_argument("--health-retention-days", type=days_arg("--health-retention-days"),
                   default=RetentionPolicy.health_days, metavar="DAYS",
                   help="keep device health history this long: every heartbeat for a day, minute averages for a "
                   f"week, hourly averages after that (default {RetentionPolicy.health_days}; 0 keeps it forever)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def _add_secret_parsers(sub: argparse._SubParsersAction) -> None:
    """`enroll-key` and `operator-token`, each with create / revoke / list on the controller's database."""
    for name, noun, arg, create, revoke, list_ in (
        ("enroll-key", "enrollment key", "key",
         cmd_enroll_key_create, cmd_enroll_key_revoke, cmd_enroll_key_list),
        ("operator-token", "operator token", "token",
         cmd_operator_token_create, cmd_operator_token_revoke, cmd_operator_token_list),
    ):
        p = sub.add_parser(name, help=f"manage {noun}s (in the controller's database)")
        commands = p.add_subparsers(dest=name.replace("-", "_") + "_command", required=True)
        c = commands.add_parser("create", help="create one and print it (only its hash is stored)")
        c.add_argument("--name", default="default" if arg == "key" else "operator",
                       help="a label for it (shown by `list` and in the controller log)")
        if arg == "token":
            c.add_argument("--role", choices=[a.label for a in Access], default=DEFAULT_ACCESS.label,
                           help="viewer: read and watch; operator: also commands, plan overrides, labels, "
                                "configuration, artifacts, rollouts; admin: also revoke/remove devices and "
                                f"read the audit log (default {DEFAULT_ACCESS.label})")
        c.set_defaults(func=create)
        c = commands.add_parser("revoke", help=f"refuse this {noun} from now on")
        c.add_argument(arg, metavar="ID", help=f"the id `list` shows, or the {noun} itself")
        c.set_defaults(func=revoke)
        c = commands.add_parser("list", help=f"list {noun}s (ids and names, never the secrets)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(func=list_)
        for c in commands.choices.values():
            db_arg(c)
            c.add_argument("--create", action="store_true",
                           help="make the database when --db names no file yet (`serve` makes it too)")


def _add_query_parsers(sub: argparse._SubParsersAction) -> None:
    """`devices` and `detections` (fleet.cli_detections): read from a running controller."""
    from .cli_detections import add_detections_command

    add_detections_command(sub)
    for name, func, help_ in (
        ("devices", cmd_devices, "list enrolled devices"),
    ):
        p = sub.add_parser(name, help=help_)
        add_connection_arguments(p)
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        if name == "devices":
            from .cli_devices import add_select_argument

            add_select_argument(p, "list only the devices it matches")


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="controller + local agents on the sample videos, in the fleet TUI")
    p.add_argument("--agents", type=int, default=3, help="number of local agents (default 3)")
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds (0: until Ctrl-C)")
    p.add_argument("--samples", type=Path, default=Path("var/samples"), help="folder with vtest.avi / bikes.mp4")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="controller db and agent state")
    p.add_argument("--text", action="store_true",
                   help="plain status lines instead of the TUI (the default when stdout is not a terminal)")
    p.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return quiet_broken_pipe(lambda: args.func(args))
    except CliError as err:
        print(f"edgefleet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
