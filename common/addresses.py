"""HOST:PORT on command lines: one parser for the controller, MQTT broker and metrics addresses."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def parse_host_port(value: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); ValueError naming the value otherwise.

    Port 0 ("any free port", for a server binding) only with `allow_port_zero`.
    """
    host, sep, port = value.rpartition(":")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def host_port_arg(flag: str, *, allow_port_zero: bool = False, as_text: bool = False) -> Callable[[str], object]:
    """An argparse `type` for a HOST:PORT flag whose message names the flag.

    Returns the (host, port) pair, or with `as_text` the value as given (checked only).
    """
    def parse(value: str):
        try:
            pair = parse_host_port(value, allow_port_zero=allow_port_zero)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be HOST:PORT, got {value!r}") from None
        return value if as_text else pair

    return parse
