"""The controller addresses an agent dials: several replicas, a DNS name with several records, or one.

`--controller` (and `controller:` in agent.yaml) is one HOST:PORT, a comma-separated list of them
(`a:50051,b:50051`; a YAML list in a file), or a name whose DNS answer has several A/AAAA records.
Every address is resolved again (`socket.getaddrinfo`) each time the link connects, so a replica
added to or removed from DNS is seen at the next reconnect. Each resolved IP is an `Endpoint`.

The link tries the endpoints of one `Rotation.round()` in order, each once: the others first,
starting from a random one and going on in list order, so the agents of a replica that went away
spread over the rest instead of all landing on the next one, and the endpoint it was connected to
last at the end. A round that reached nothing is followed by the link's backoff.

TLS: an endpoint dialled by IP for a name is checked against that name (gRPC's
`ssl_target_name_override`) and calls carry `name:port` as their authority, exactly as if the name
had been dialled; a listed IP address is checked against that IP.
"""
from __future__ import annotations

import ipaddress
import json
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.common.addresses import parse_host_port


@dataclass(frozen=True)
class Address:
    """One HOST:PORT of the controller setting; `host` without the brackets of an IPv6 literal."""
    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)


@dataclass(frozen=True)
class Endpoint:
    """One place to dial: the IP `ip` that `address` resolved to."""
    address: Address
    ip: str

    @property
    def target(self) -> str:
        """What gRPC dials: IP:PORT."""
        return join_host_port(self.ip, self.address.port)

    def __str__(self) -> str:
        """The address as configured, with the IP it resolved to when that differs."""
        return str(self.address) if self.address.is_ip else f"{self.address} ({self.ip})"

    def channel_options(self) -> list[tuple[str, str]]:
        """gRPC options that make dialling the IP look like dialling the name: the name for the
        certificate check and as the calls' authority (nothing for an address that is an IP)."""
        if self.address.is_ip:
            return []
        return [("grpc.ssl_target_name_override", self.address.host),
                ("grpc.default_authority", str(self.address))]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_controllers(value: str | Sequence[Any]) -> tuple[Address, ...]:
    """The addresses of a controller setting: text (comma-separated) or a list (a YAML file's).

    ValueError names the address that is wrong, and where it is in the list:
    `must be HOST:PORT, got 'b:x' (address 2 of 2 in 'a:50051,b:x')`."""
    items = [str(item) for item in value] if not isinstance(value, str) else value.split(",")
    addresses: list[Address] = []
    for number, item in enumerate(items, 1):
        address = _address(item.strip())
        if address is None:
            where = f" (address {number} of {len(items)} in {','.join(items)!r})" if len(items) > 1 else ""
            raise ValueError(f"must be HOST:PORT, got {item.strip()!r}{where}")
        if address in addresses:
            raise ValueError(f"lists {address} twice")
        addresses.append(address)
    if not addresses:
        raise ValueError("must be HOST:PORT, got no address")
    return tuple(addresses)


def _address(text: str) -> Address | None:
    """HOST:PORT (an IPv6 host in brackets) as an Address; None when it is not one (a scheme, a
    path or spaces are not)."""
    if "/" in text or any(c.isspace() for c in text):
        return None
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return None
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]") and is_ip(host[1:-1])):
            return None
        host = host[1:-1]
    return Address(host, port)


def controller_text(value: str | Sequence[Any]) -> str:
    """The setting as one text, `a:50051,b:50051` (what the config keeps and identity.json records)."""
    return ",".join(str(address) for address in parse_controllers(value))


Resolver = Callable[..., list[tuple[Any, ...]]]


def resolve(address: Address, getaddrinfo: Resolver = socket.getaddrinfo) -> list[Endpoint]:
    """The endpoints of `address`: itself when it is an IP, else every A/AAAA record of its name
    (getaddrinfo's order, once each). OSError (socket.gaierror) when the name does not resolve."""
    if address.is_ip:
        return [Endpoint(address, address.host)]
    endpoints: list[Endpoint] = []
    for _family, _type, _proto, _name, sockaddr in getaddrinfo(address.host, address.port,
                                                                 type=socket.SOCK_STREAM):
        endpoint = Endpoint(address, str(sockaddr[0]))
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return endpoints


class Rotation:
    """The order in which the link tries the controller's endpoints (see the module's docstring)."""

    def __init__(self, addresses: Sequence[Address], getaddrinfo: Resolver = socket.getaddrinfo,
                 rng: random.Random | None = None):
        self.addresses = tuple(addresses)
        self._getaddrinfo = getaddrinfo
        self._rng = rng or random.Random()
        self.last: Endpoint | None = None
        """The endpoint the link was connected to last (None: not yet)."""

    @property
    def several(self) -> bool:
        """Whether there may be more than one endpoint (several addresses, or a name)."""
        return len(self.addresses) > 1 or not self.addresses[0].is_ip

    def connected(self, endpoint: Endpoint) -> None:
        self.last = endpoint

    def round(self) -> tuple[list[Endpoint], list[tuple[str, str]]]:
        """Every endpoint once, resolved now, in the order to try them; and each address that gave
        none, with why (`("name:50051", "[Errno -2] Name or service not known")`)."""
        endpoints: list[Endpoint] = []
        problems: list[tuple[str, str]] = []
        for address in self.addresses:
            try:
                found = resolve(address, self._getaddrinfo)
            except OSError as err:
                problems.append((str(address), str(err)))
                continue
            endpoints.extend(e for e in found if e.target not in {k.target for k in endpoints})
        last = next((e for e in endpoints if self.last is not None and e.target == self.last.target), None)
        others = [e for e in endpoints if e is not last]
        start = self._rng.randrange(len(others)) if others else 0
        return others[start:] + others[:start] + ([last] if last is not None else []), problems


def same_controller(saved: str, addresses: Sequence[Address]) -> bool:
    """Whether an identity saved for the controller setting `saved` holds for `addresses`: they
    share an address (replicas added or removed keep the device's identity; another controller does not)."""
    try:
        return bool(set(parse_controllers(saved)) & set(addresses))
    except ValueError:
        return False


def saved_controller(identity_path: Path) -> str | None:
    """The controller setting an identity file was saved for (None: no readable identity)."""
    try:
        saved = json.loads(identity_path.read_text()).get("controller")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, str) else None
