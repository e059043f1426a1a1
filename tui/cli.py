"""`edgefleet tui`: watch and operate the fleet from a terminal.

    edgefleet tui --controller 127.0.0.1:50051 --token efo_…   (or EDGEFLEET_TOKEN)
    python -m edgefleet.tui --controller …                      (the same, without the edgefleet CLI)

This module imports neither Textual nor gRPC until the command runs, so registering it on
the `edgefleet` parser costs nothing for the other subcommands.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgefleet.fleet.channel import add_connection_arguments

    add_connection_arguments(parser)
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="write the TUI's log here (the terminal belongs to the UI while it runs)")
    parser.add_argument("--duration", type=float, default=0, metavar="S",
                        help="quit after S seconds (default 0: when you press q)")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register `tui` on an argparse subparsers object; its `func(args)` returns the exit code."""
    parser = subparsers.add_parser("tui", help="watch and operate the fleet in a terminal UI")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


@contextlib.contextmanager
def log_off_the_terminal(log_file: Path | None):
    """While the UI owns the terminal, log lines would tear it: send them to `log_file` or nowhere."""
    root = logging.getLogger()
    terminal = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for handler in terminal:
        root.removeHandler(handler)
    added = None
    if log_file is not None:
        added = logging.FileHandler(log_file)
        added.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root.addHandler(added)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
    try:
        yield
    finally:
        if added is not None:
            root.removeHandler(added)
            added.close()
        for handler in terminal:
            root.addHandler(handler)


def run_app(address: str, token: str, tls=None, log_file: Path | None = None, duration_s: float = 0) -> int:
    """Run the TUI in the foreground until the operator quits (or `duration_s` passes, when > 0).

    `edgefleet demo` runs it too (as `python -m edgefleet.tui`), after it started the controller and the agents.
    """
    from .app import FleetApp
    from .picture import detect_graphics

    detect_graphics()  # asks the terminal, which it cannot once the app owns it
    app = FleetApp(address, token, tls, exit_after_s=duration_s or None)
    with log_off_the_terminal(log_file):
        app.run()
    return app.return_code or 0


def run(args: argparse.Namespace) -> int:
    """Run the app for parsed arguments; 2 with a one-line message when they cannot work."""
    from edgefleet.fleet.errors import FleetError
    from edgefleet.fleet.tls import ClientTLS

    if not args.token:
        print("edgefleet tui: error: no operator token: pass --token or set EDGEFLEET_TOKEN "
              "(made by `edgefleet operator-token create`)", file=sys.stderr)
        return 2
    try:
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls_ca or args.tls_cert or args.tls_key) \
            else None
        if tls is not None:
            tls.credentials()  # read the PEM files now: a missing one is a one-line error, not a trace
    except FleetError as err:
        print(f"edgefleet tui: error: {err}", file=sys.stderr)
        return 2
    refused = _refusal(args.controller, args.token, tls)
    if refused is not None:  # before the screen: a bad token is one line and exit 2, not a banner forever
        print(f"edgefleet tui: error: the controller at {args.controller} refused the operator token: "
              f"{refused.code}: {refused.details}", file=sys.stderr)
        return 2
    return run_app(args.controller, args.token, tls, args.log_file, args.duration)


def _refusal(address: str, token: str, tls):
    from .client import FleetClient

    client = FleetClient(address, token, tls, timeout=5.0)
    try:
        return client.refusal()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet tui", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
