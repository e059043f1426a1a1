"""`edgefleet device config get|set|diff|clear`: a device's desired configuration vs what it runs.

    edgefleet device config set cam-07 agent-override.yaml --wait 20     # one device; exit 1 if it refuses
    echo 'detect-interval: 3' | edgefleet device config set --select site=lab - --wait 20
    edgefleet device config get cam-07 [--json]                          # desired and reported, in sync or not
    edgefleet device config diff cam-07                                  # unified diff: applied -> desired
    edgefleet device config clear cam-07                                 # back to the device's own file and flags

The document's keys are agent.yaml's (docs/agent.md); it wins over the device's file and flags,
except the device-only settings (controller, TLS files, state dir, secrets), which it may not set.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from edgefleet.v1 import fleet_pb2

from .cli import CliError, _call
from .cli_common import print_json
from .cli_devices import add_select_argument, client, resolve_device, select_text

EXIT_REFUSED = 1
"""`set` or `clear` when a device refused the document, or did not answer within --wait."""


def config_lines(config: fleet_pb2.DeviceConfig) -> list[str]:
    """What `get` prints: desired, applied, refused, in sync."""
    desired = (f"v{config.desired_version} (set for {config.desired_from})" if config.desired_version
               else "none (the device runs its own agent.yaml and flags)")
    lines = [f"device:   {config.device_id}", f"desired:  {desired}",
             f"applied:  v{config.applied_version}" + (f" ({config.how})" if config.how else ""),
             f"in sync:  {'yes' if config.in_sync else 'no'}"]
    if config.refused_version:
        lines.append(f"refused:  v{config.refused_version}: " + "; ".join(config.errors))
    if config.desired_version and not config.desired_document:
        lines.append("document: (empty: back to the device's own agent.yaml and flags)")
    elif config.desired_document:
        lines += ["document:"] + [f"  {line}" for line in config.desired_document.splitlines()]
    return lines


def cmd_config_get(args) -> int:
    config = _call(args, "GetDeviceConfig", fleet_pb2.GetDeviceRequest(device_id=resolve_device(args, args.device)))
    if args.json:
        print_json(config)
    else:
        print("\n".join(config_lines(config)))
    return 0


def cmd_config_diff(args) -> int:
    """A unified diff from what the device applied to what is desired; exit 1 when they differ."""
    config = _call(args, "GetDeviceConfig", fleet_pb2.GetDeviceRequest(device_id=resolve_device(args, args.device)))
    diff = list(difflib.unified_diff(config.applied_document.splitlines(keepends=True),
                                     config.desired_document.splitlines(keepends=True),
                                     f"applied v{config.applied_version}", f"desired v{config.desired_version}"))
    sys.stdout.writelines(line if line.endswith("\n") else line + "\n" for line in diff)
    if not diff and not config.in_sync:
        print(f"same documents, but the device reports v{config.applied_version}, not v{config.desired_version}")
    return 0 if config.in_sync else EXIT_REFUSED


def _read_document(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"{path}: {getattr(err, 'strerror', None) or err}") from err


def cmd_config_set(args) -> int:
    clear = args.config_command == "clear"
    device, file = _target(args)
    request = fleet_pb2.SetDesiredConfigRequest(
        device_id=resolve_device(args, device) if device else "", select=select_text(args), clear=clear,
        document="" if clear else _read_document(file), timeout_ms=int(args.wait * 1000))
    response = _call(args, "SetDesiredConfig", request)
    for config in response.configs:
        print(f"{config.device_id}: desired config v{config.desired_version} "
              f"{'cleared' if clear else 'set'} (for {config.desired_from})")
    failed = 0
    for outcome in response.outcomes:
        state = fleet_pb2.CommandState.Name(outcome.state).lower().replace("_", " ")
        if outcome.state == fleet_pb2.DONE:
            print(f"{outcome.device_id}: applied ({outcome.detail}) in {outcome.round_trip_ms:.0f} ms")
            continue
        if outcome.state == fleet_pb2.NOT_CONNECTED:
            print(f"{outcome.device_id}: {state}: offline: it gets the document when it connects", file=sys.stderr)
            continue
        failed += 1
        print(f"{outcome.device_id}: {state}: {outcome.error}", file=sys.stderr)
    if not args.wait:
        print("sent to the connected devices; `edgefleet device config get DEVICE` shows what each applied")
    return EXIT_REFUSED if failed else 0


def _target(args) -> tuple[str, str]:
    """(device, file) from the positional arguments: `DEVICE FILE` (or `DEVICE` for clear), or `FILE` with --select."""
    given = list(args.target)
    wanted = (0 if args.select else 1) + (0 if args.config_command == "clear" else 1)
    if len(given) != wanted:
        usage = "DEVICE" if args.config_command == "clear" else "DEVICE FILE.yaml|-"
        raise CliError(f"give {usage}, or --select EXPR" + ("" if args.config_command == "clear" else " FILE.yaml|-")
                       + f"; got {len(given)} argument(s)")
    device = "" if args.select else given[0]
    return device, (given[-1] if args.config_command != "clear" else "")


def add_config_commands(commands: argparse._SubParsersAction) -> None:
    """`device config get|set|diff|clear` in the `device` group (fleet.cli_devices)."""
    p = commands.add_parser("config", help="a device's desired configuration (the controller's document) vs what "
                                           "it runs")
    config = p.add_subparsers(dest="config_command", required=True)
    c = client(config.add_parser("get", help="desired and reported configuration, and whether they agree"),
               cmd_config_get)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = client(config.add_parser("diff", help="unified diff from the applied document to the desired one "
                                              "(exit 1 when the device is not in sync)"), cmd_config_diff)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    for verb, help_ in (("set", "set the document (agent.yaml keys) of a device or of the devices a selector "
                                "matches; each gets the next version"),
                        ("clear", "remove the document: the device goes back to its own agent.yaml and flags")):
        c = client(config.add_parser(verb, help=help_), cmd_config_set, timeout=None)
        c.add_argument("target", nargs="*", metavar="DEVICE FILE" if verb == "set" else "DEVICE",
                       help="device id (or a unique prefix), then the YAML file (- reads stdin)"
                       if verb == "set" else "device id (or a unique prefix)")
        add_select_argument(c, "every device it matches (instead of DEVICE)")
        c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait this long for each connected device's answer (exit 1 if one refused or "
                            "did not answer; default 0: do not wait)")
