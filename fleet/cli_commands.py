"""`edgefleet device restart|ping|rollback|plan|revoke|remove`: commands a device answers, and decommissioning.

    edgefleet device ping cam-07                         # cam-07: answered in 3.1 ms (pong)
    edgefleet device restart --select site=lab --reason "new camera cable"
    edgefleet device rollback cam-07 --reason "misses bikes"      # exit 1: refused, no previous engine
    edgefleet device plan cam-07 --min-interval 4                 # waits for the device's answer
    edgefleet device revoke cam-07 --reason "stolen"             # its token is refused from now on
    edgefleet device remove cam-07 --purge-data                  # gone, with its detections

Each device's answer is printed (done, refused with the device's reason, no answer, not connected);
the exit code is 0 only when every device answered that it did it, 1 otherwise, 2 for bad input or a
controller that refused the call.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from edgefleet.v1 import fleet_pb2, types_pb2

from .channel import add_connection_arguments
from .cli import CliError, control_stub
from .cli_common import print_json
from .cli_devices import add_select_argument, client, resolve_device, select_text

EXIT_NOT_DONE = 1
"""A device refused, did not answer in time, or was not connected."""

ANSWER_WAIT_S = 10.0
CALL_MARGIN_S = 10.0
"""The call's deadline is the answer wait plus this: the controller answers after the devices do."""


def outcome_line(outcome: fleet_pb2.CommandOutcome, action: str) -> str:
    """One device's answer in words."""
    state = outcome.state
    if state == fleet_pb2.DONE:
        verb = "answered" if action == "ping" else "done"
        detail = f" ({outcome.detail})" if outcome.detail else ""
        return f"{outcome.device_id}: {verb} in {outcome.round_trip_ms:.1f} ms{detail}"
    if state == fleet_pb2.REFUSED:
        return f"{outcome.device_id}: refused: {outcome.error}"
    if state == fleet_pb2.TIMED_OUT:
        return f"{outcome.device_id}: no answer: {outcome.error}"
    return f"{outcome.device_id}: not connected (no open Session; nothing was sent)"


def _target(args) -> tuple[str, str]:
    """(device id, selector): exactly one of DEVICE and --select."""
    select = select_text(args)
    if bool(args.device) == bool(select):
        raise CliError("name one DEVICE or give --select EXPR, not both or neither")
    return (resolve_device(args, args.device) if args.device else "", select)


def _send(args, request: fleet_pb2.SendCommandRequest, action: str) -> int:
    if args.timeout <= 0:
        raise CliError(f"--timeout must be > 0, got {args.timeout}")
    request.device_id, request.select = _target(args)
    request.timeout_ms = int(args.timeout * 1000)
    with control_stub(args, "SendCommand") as stub:
        response = stub.SendCommand(request, timeout=args.timeout + CALL_MARGIN_S)
    if args.json:
        print_json(list(response.outcomes))
    else:
        for outcome in response.outcomes:
            print(outcome_line(outcome, action))
    return 0 if all(o.state == fleet_pb2.DONE for o in response.outcomes) else EXIT_NOT_DONE


def cmd_ping(args) -> int:
    return _send(args, fleet_pb2.SendCommandRequest(ping=True), "ping")


def cmd_restart(args) -> int:
    return _send(args, fleet_pb2.SendCommandRequest(restart_reason=args.reason or "requested by an operator"),
                 "restart")


def cmd_rollback(args) -> int:
    return _send(args, fleet_pb2.SendCommandRequest(rollback_reason=args.reason or "requested by an operator"),
                 "rollback")


def _plan_of(args, device_id: str) -> types_pb2.SetPlan:
    """The SetPlan the flags ask for; --pin pins the plan the device runs now."""
    bounds = {"max_input_size": args.max_input_size, "min_detect_interval": args.min_interval,
              "max_detect_interval": args.max_interval}
    given = {k: v for k, v in bounds.items() if v is not None}
    if args.clear:
        if given or args.pin:
            raise CliError("--clear removes the override; it takes no other flag")
        return types_pb2.SetPlan(clear=True)
    if not given and not args.pin:
        raise CliError("say what to set: --pin, --max-input-size N, --min-interval N, --max-interval N, or --clear")
    plan = types_pb2.SetPlan(**given)
    if args.pin:
        with control_stub(args, "GetDevice") as stub:
            current = stub.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=CALL_MARGIN_S).plan
        plan.pinned.CopyFrom(current)
        plan.pinned.ClearField("reason")
    return plan


def cmd_plan(args) -> int:
    """SetPlanOverride; the controller waits for a connected device's answer (a refusal is FAILED_PRECONDITION)."""
    device_id = resolve_device(args, args.device)
    request = fleet_pb2.SetPlanOverrideRequest(device_id=device_id, plan=_plan_of(args, device_id))
    try:
        with control_stub(args, "SetPlanOverride") as stub:
            device = stub.SetPlanOverride(request, timeout=ANSWER_WAIT_S + CALL_MARGIN_S)
    except CliError as err:
        cause = err.__cause__
        if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.FAILED_PRECONDITION:
            print(f"{device_id}: {cause.details()}")
            return EXIT_NOT_DONE
        raise
    what = "override cleared" if request.plan.clear else "override set"
    if device.connected:
        print(f"{device_id}: {what}; the device applied it (its next heartbeat reports the plan it runs)")
    else:
        print(f"{device_id}: {what}; the device is not connected: it gets it when its next Session opens")
    return 0


def cmd_revoke(args) -> int:
    device_id = resolve_device(args, args.device)
    with control_stub(args, "RevokeDevice") as stub:
        device = stub.RevokeDevice(fleet_pb2.RevokeDeviceRequest(device_id=device_id, reason=args.reason or ""),
                                   timeout=args.timeout)
    print(f"{device.device_id}: revoked; its token is refused from now on and its data is kept "
          f"({device.detections_stored} detection records). Enrolling the same hardware again with a valid key "
          "brings it back under the same id.")
    return 0


def cmd_remove(args) -> int:
    device_id = resolve_device(args, args.device)
    with control_stub(args, "RemoveDevice") as stub:
        response = stub.RemoveDevice(fleet_pb2.RemoveDeviceRequest(device_id=device_id, purge_data=args.purge_data),
                                     timeout=args.timeout)
    kept = (f"{response.detections_deleted} detection records, its health history and events deleted"
            if args.purge_data else "its detections, health history and events are kept")
    print(f"{response.device_id}: removed; {kept}")
    return 0


def _answered(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A Session command: DEVICE or --select, --timeout for each device's answer, --json."""
    add_connection_arguments(parser)
    parser.add_argument("device", nargs="?", metavar="DEVICE", help="device id, or a unique prefix of one")
    add_select_argument(parser, "to send the command to every device it matches")
    parser.add_argument("--timeout", type=float, default=ANSWER_WAIT_S, metavar="S",
                        help=f"seconds to wait for each device's answer (default {ANSWER_WAIT_S:.0f})")
    parser.add_argument("--json", action="store_true", help="the outcomes, machine-readable")
    parser.set_defaults(func=func)
    return parser


def add_command_commands(commands: argparse._SubParsersAction) -> None:
    """restart, ping, rollback, plan, revoke and remove in the `device` group (fleet/cli_devices.py)."""
    _answered(commands.add_parser("ping", help="check the device answers; prints the round trip"), cmd_ping)
    for verb, func, help_ in (("restart", cmd_restart, "restart the agent (its loop, or the process under systemd)"),
                              ("rollback", cmd_rollback, "return to the previous engine")):
        _answered(commands.add_parser(verb, help=help_), func).add_argument("--reason", help="recorded with the event")
    c = client(commands.add_parser("plan", help="pin or bound a device's plan (waits for its answer)"), cmd_plan)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    c.add_argument("--pin", action="store_true", help="pin the plan it runs now (no adaptive changes)")
    c.add_argument("--max-input-size", type=int, metavar="N", help="largest input size the plan may use")
    c.add_argument("--min-interval", type=int, metavar="N", help="detect at most every Nth frame")
    c.add_argument("--max-interval", type=int, metavar="N", help="detect at least every Nth frame")
    c.add_argument("--clear", action="store_true", help="remove the override: the device plans on its own again")
    c = client(commands.add_parser("revoke", help="refuse the device's token from now on (admin); data is kept"),
               cmd_revoke)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    c.add_argument("--reason", help="recorded with the event")
    c = client(commands.add_parser("remove", help="delete a revoked or disconnected device (admin)"), cmd_remove)
    c.add_argument("device", metavar="DEVICE", help="device id, or a unique prefix of one")
    c.add_argument("--purge-data", action="store_true", help="also delete its detections, health history and events")
