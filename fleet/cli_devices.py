"""`edgefleet device …`: look at and manage single devices, or the devices a selector picks.

    edgefleet device list --select 'site=lab,tier in (a,b)'     # the same table as `edgefleet devices`
    edgefleet device label cam-07 site=yard owner=ops           # operator labels: they win over the device's own
    edgefleet device label cam-07 --remove owner
    edgefleet device rollback cam-07-9f1e2d --reason "misses bikes"

A device is named by its id or by a prefix of it that only one device has (`device list` shows them).
Modules that add sub-commands to the group take the `commands` sub-parsers `add_device_commands` makes
and register theirs with `client()`, which adds the connection flags.
"""
from __future__ import annotations

import argparse

from edgefleet.v1 import fleet_pb2

from .channel import add_connection_arguments
from .cli import CliError, _call, cmd_devices
from .errors import FleetError
from .selectors import parse_label


def resolve_device(args, text: str) -> str:
    """The id of the one device whose id is `text` or starts with it; CliError naming the candidates otherwise."""
    ids = [d.device_id for d in _call(args, "ListDevices", fleet_pb2.ListDevicesRequest()).devices]
    if text in ids:
        return text
    matches = [i for i in ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"no device {text!r}: `edgefleet devices` lists their ids")
    shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise CliError(f"device {text!r} is a prefix of {len(matches)} device ids ({shown}); give more of it")


def labels_text(device: fleet_pb2.Device) -> str:
    """`k=v` pairs, an operator label marked `*` (it wins over the device's own); `-` when there are none."""
    return ",".join(f"{k}={v}{'*' if k in device.operator_labels else ''}"
                    for k, v in sorted(device.labels.items())) or "-"


def cmd_device_label(args) -> int:
    try:
        set_labels = dict(parse_label(text) for text in args.labels)
    except FleetError as err:
        raise CliError(str(err)) from err
    if not set_labels and not args.remove:
        raise CliError("give labels to set (KEY=VALUE ...), keys to remove (--remove KEY), or both")
    request = fleet_pb2.SetDeviceLabelsRequest(device_id=resolve_device(args, args.device), set=set_labels,
                                               remove=args.remove or [])
    device = _call(args, "SetDeviceLabels", request)
    print(f"{device.device_id}: {labels_text(device)}")
    if device.operator_labels:
        print("(* set by an operator; they win over the device's own --label and agent.yaml labels)")
    return 0


def client(parser: argparse.ArgumentParser, func, timeout: float | None = 10.0) -> argparse.ArgumentParser:
    """`parser` with the controller's connection flags and --timeout, running `func`."""
    add_connection_arguments(parser)
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds to wait for the controller")
    parser.set_defaults(func=func)
    return parser


def add_device_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `device` group with list, label and the Session commands; returns its sub-parsers for more."""
    p = sub.add_parser("device", help="list, label and command devices")
    commands = p.add_subparsers(dest="device_command", required=True)
    c = client(commands.add_parser("list", help="devices, all or those a selector matches"), cmd_devices)
    add_select_argument(c, "list only the devices it matches")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = client(commands.add_parser("label", help="set or remove a device's operator labels"), cmd_device_label)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    c.add_argument("labels", nargs="*", metavar="KEY=VALUE", help="operator labels to set")
    c.add_argument("--remove", action="append", metavar="KEY", help="operator label to remove (repeatable)")
    from .cli_commands import add_command_commands  # restart, ping, rollback, plan, revoke, remove

    add_command_commands(commands)
    return commands


def add_select_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--select EXPR (repeatable: the expressions are joined, all must hold), read as `args.select`."""
    parser.add_argument("--select", action="append", metavar="EXPR",
                        help=f"label selector, {what}: K=V, K!=V, 'K in (A,B)', 'K notin (A,B)', K, !K, "
                        "comma-separated (repeatable; all must hold)")


def select_text(args) -> str:
    """The --select expressions as one selector expression (empty: every device)."""
    return ",".join(text for text in (getattr(args, "select", None) or ()) if text.strip())
