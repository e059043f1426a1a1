"""The controller setting: one address, a comma-separated list, a YAML list, a name with several
DNS records; the order the link tries them in; the identity kept when replicas are added."""
from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.cli import build_parser
from edgefleet.agent.controllers import Address, Endpoint, Rotation, controller_text, parse_controllers, resolve
from edgefleet.agent.flags import parse_args
from edgefleet.agent.health import HealthSample
from edgefleet.agent.identity import Identity, save_identity
from edgefleet.agent.link import Link
from edgefleet.agent.messages import Hello
from edgefleet.agent.replicas import Replicas


@pytest.mark.parametrize("value, text", [
    ("ctl.example:50051", "ctl.example:50051"),
    ("a:50051,b:50051", "a:50051,b:50051"),
    (" a:50051 , 10.0.0.2:50051 ", "a:50051,10.0.0.2:50051"),
    (["a:50051", "b:50052"], "a:50051,b:50052"),
    ("[::1]:50051,127.0.0.1:50051", "[::1]:50051,127.0.0.1:50051"),
    ("[fd00::2]:443", "[fd00::2]:443"),
])
def test_addresses_are_read_and_written_back_as_one_text(value, text):
    assert controller_text(value) == text


@pytest.mark.parametrize("value, message", [
    ("ctl.example", "must be HOST:PORT, got 'ctl.example'"),
    ("a:50051,b", "must be HOST:PORT, got 'b' (address 2 of 2 in 'a:50051,b')"),
    ("a:50051,,b:50051", "must be HOST:PORT, got '' (address 2 of 3 in 'a:50051,,b:50051')"),
    ("a:50051,", "got '' (address 2 of 2"),
    ("a:0", "must be HOST:PORT, got 'a:0'"),
    ("a:70000", "got 'a:70000'"),
    ("http://a:50051", "got 'http://a:50051'"),
    ("dns:///a:50051", "got 'dns:///a:50051'"),
    ("a b:50051", "got 'a b:50051'"),
    ("[ctl]:50051", "got '[ctl]:50051'"),
    ("a:50051,b:50051,a:50051", "lists a:50051 twice"),
    ([], "got no address"),
])
def test_a_bad_address_is_named_with_its_place_in_the_list(value, message):
    with pytest.raises(ValueError) as err:
        parse_controllers(value)
    assert message in str(err.value)


def config_error(tmp_path: Path, capsys, *argv: str, yaml: str | None = None) -> str:
    if yaml is not None:
        (tmp_path / "agent.yaml").write_text(yaml)
        argv = ("--config", str(tmp_path / "agent.yaml"), *argv)
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_parser(), ["run", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_the_flag_takes_a_comma_separated_list_and_the_file_a_yaml_list(tmp_path):
    args = parse_args(build_parser(), ["run", "--controller", "a:50051, b:50051", "--source", "x.avi"])
    assert args.config.controller == "a:50051,b:50051"
    (tmp_path / "agent.yaml").write_text("controller:\n  - a:50051\n  - '[::1]:50051'\nsources: [x.avi]\n")
    args = parse_args(build_parser(), ["run", "--config", str(tmp_path / "agent.yaml")])
    assert args.config.controller == "a:50051,[::1]:50051"
    (tmp_path / "agent.yaml").write_text("controller: a:50051,b:50051\nsources: [x.avi]\n")
    args = parse_args(build_parser(), ["run", "--config", str(tmp_path / "agent.yaml"), "--controller", "c:1"])
    assert args.config.controller == "c:1"  # the flag wins over the file, list and all


def test_a_bad_address_is_a_config_error_naming_it(tmp_path, capsys):
    err = config_error(tmp_path, capsys, "--controller", "a:50051,b:http", "--source", "x.avi")
    assert "edge-agent run: error: --controller must be HOST:PORT, got 'b:http' (address 2 of 2 in " in err
    err = config_error(tmp_path, capsys, yaml="sources: [x.avi]\ncontroller:\n  - a:50051\n  - b\n")
    assert "agent.yaml:2: controller: --controller must be HOST:PORT, got 'b' (address 2 of 2 in 'a:50051,b')" in err
    err = config_error(tmp_path, capsys, yaml="sources: [x.avi]\ncontroller: []\n")
    assert "agent.yaml:2: controller: is an empty list" in err
    err = config_error(tmp_path, capsys, yaml="sources: [x.avi]\ncontroller: [{host: a}]\n")
    assert "agent.yaml:2: controller: must be a single value, got a mapping" in err


# ---- resolving ----

def test_an_ip_address_is_its_own_endpoint_and_is_checked_against_itself():
    (endpoint,) = resolve(Address("10.0.0.2", 50051), getaddrinfo=_no_dns)
    assert (endpoint.target, str(endpoint), endpoint.channel_options()) == ("10.0.0.2:50051", "10.0.0.2:50051", [])
    (endpoint,) = resolve(parse_controllers("[fd00::2]:50051")[0], getaddrinfo=_no_dns)
    assert endpoint.target == "[fd00::2]:50051"


def _no_dns(*args, **kwargs):
    raise AssertionError("an IP address needs no DNS lookup")


def test_localhost_resolves_to_its_loopback_addresses_checked_against_the_name():
    endpoints = resolve(Address("localhost", 50051))
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", 50051, type=socket.SOCK_STREAM)}
    assert {e.ip for e in endpoints} == expected and len(endpoints) == len(expected)
    by_ip = {e.ip: e for e in endpoints}
    assert "127.0.0.1" in by_ip or "::1" in by_ip
    for endpoint in endpoints:
        assert endpoint.target in ("127.0.0.1:50051", "[::1]:50051")
        assert str(endpoint) == f"localhost:50051 ({endpoint.ip})"
        assert dict(endpoint.channel_options()) == {"grpc.ssl_target_name_override": "localhost",
                                                     "grpc.default_authority": "localhost:50051"}


class Dns:
    """A DNS answer by name, in getaddrinfo's shape; a name it does not hold fails as gaierror."""

    def __init__(self, records: dict[str, list[str]]):
        self.records = records
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int, type: int = 0):
        self.lookups.append(host)
        if host not in self.records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port) if ":" not in ip else (ip, port, 0, 0)) for ip in self.records[host]]


def targets(endpoints: list[Endpoint]) -> list[str]:
    return [e.target for e in endpoints]


def test_a_name_with_several_records_is_one_endpoint_per_record_resolved_every_round():
    dns = Dns({"ctl.fleet": ["10.0.0.1", "10.0.0.2", "fd00::3", "10.0.0.1"]})
    rotation = Rotation(parse_controllers("ctl.fleet:50051"), getaddrinfo=dns, rng=random.Random(1))
    assert rotation.several
    endpoints, problems = rotation.round()
    assert sorted(targets(endpoints)) == ["10.0.0.1:50051", "10.0.0.2:50051", "[fd00::3]:50051"]
    assert problems == []
    dns.records["ctl.fleet"] = ["10.0.0.2", "10.0.0.4"]  # a replica replaced: seen at the next round
    assert sorted(targets(rotation.round()[0])) == ["10.0.0.2:50051", "10.0.0.4:50051"]
    assert dns.lookups == ["ctl.fleet", "ctl.fleet"]


def test_a_name_that_does_not_resolve_is_reported_and_the_others_are_tried():
    rotation = Rotation(parse_controllers("gone.fleet:50051,10.0.0.9:50051"), getaddrinfo=Dns({}))
    endpoints, problems = rotation.round()
    assert targets(endpoints) == ["10.0.0.9:50051"]
    assert problems == [("gone.fleet:50051", "[Errno -2] Name or service not known")]


# ---- the order of a round ----

def test_each_round_tries_every_endpoint_once_and_the_one_lost_last():
    rotation = Rotation(parse_controllers("a:1,b:2,c:3,d:4"), getaddrinfo=Dns(
        {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["10.0.0.3"], "d": ["10.0.0.4"]}), rng=random.Random(3))
    first, _ = rotation.round()
    assert sorted(targets(first)) == ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3", "10.0.0.4:4"]
    rotation.connected(first[0])
    starts = set()
    for _ in range(40):
        order, _ = rotation.round()
        assert sorted(targets(order)) == sorted(targets(first)), "each endpoint once"
        assert order[-1].target == first[0].target, "the one connected to last comes last"
        others = targets(order[:-1])
        at = others.index(min(others))
        assert others[at:] + others[:at] == sorted(others), "the others in list order, from one of them on"
        starts.add(others[0])
    assert len(starts) == 3, "agents that lose the same replica start at different ones"


def test_two_replicas_alternate():
    rotation = Rotation(parse_controllers("127.0.0.1:5001,127.0.0.1:5002"))
    for lost, then in (("127.0.0.1:5001", "127.0.0.1:5002"), ("127.0.0.1:5002", "127.0.0.1:5001")):
        rotation.connected(next(e for e in rotation.round()[0] if e.target == lost))
        assert targets(rotation.round()[0]) == [then, lost]


def test_only_one_ip_address_has_nowhere_else_to_go():
    assert not Rotation(parse_controllers("127.0.0.1:5001")).several
    assert Rotation(parse_controllers("127.0.0.1:5001,127.0.0.1:5002")).several


# ---- the identity ----

def link(tmp_path: Path, controller: str) -> Link:
    return Link(controller=controller, state_dir=tmp_path, outbox_path=tmp_path / "outbox.db", enroll_key=None,
                name="t", hello=lambda: Hello(HardwareProfile(), DevicePlan(), [], 0.0), health=HealthSample)


@pytest.mark.parametrize("saved, configured, kept", [
    ("a:50051", "a:50051", True),
    ("a:50051", "a:50051,b:50051", True),  # a replica added: still this fleet
    ("a:50051,b:50051", "b:50051,c:50051", True),
    ("a:50051,b:50051", "c:50051", False),  # another controller: enroll there
    ("a:50051", "a:50052", False),
    ("not an address", "a:50051", False),
])
def test_the_identity_holds_while_the_setting_shares_an_address_with_the_saved_one(tmp_path, saved, configured,
                                                                                    kept):
    save_identity(tmp_path / "identity.json", Identity("dev-1", "tok", saved, b""))
    identity = link(tmp_path, configured)._load_identity()
    assert (identity is not None) == kept
    if kept:
        assert (identity.device_id, identity.token) == ("dev-1", "tok")


# ---- rounds, backoff and timeouts ----

def run_rounds(replicas: Replicas, outcomes: list[bool]) -> list[tuple[str, float | None, float | None] | float]:
    """Run `replicas` with a connection that answers `outcomes` in turn (then stops): what happened,
    in order: each attempt as (target, connect timeout, accept timeout), each wait as its seconds."""
    events: list = []

    async def connection(endpoint: Endpoint) -> bool:
        events.append((endpoint.target, replicas.connect_timeout_s, replicas.accept_timeout_s))
        accepted = outcomes.pop(0)
        if accepted:  # as the link does when a Session is accepted: the rotation learns where it is
            replicas.on_connected(endpoint)
        return accepted

    async def wait_stop(seconds: float) -> bool:
        events.append(seconds)
        return not outcomes

    asyncio.run(replicas.run(connection, wait_stop, lambda: False))
    return events


def test_a_round_tries_every_endpoint_without_waiting_and_the_backoff_grows_between_rounds():
    replicas = Replicas("127.0.0.1:5001,127.0.0.1:5002", backoff_max_s=2.0)
    events = run_rounds(replicas, [False, False, False, False, False, False, True, False, True])
    attempts = [e for e in events if isinstance(e, tuple)]
    waits = [e for e in events if not isinstance(e, tuple)]
    shape = "".join("a" if isinstance(e, tuple) else "w" for e in events)  # attempts and waits
    assert shape == "aaw" * 3 + "aw" + "aaw"  # three rounds that failed, one connection, the round after it
    assert {a[0] for a in attempts[:2]} == {a[0] for a in attempts[2:4]} == {"127.0.0.1:5001", "127.0.0.1:5002"}
    assert 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0  # rounds that failed
    assert [a[1:] for a in attempts[:7]] == [(3.0, 10.0)] * 2 + [(6.0, 20.0)] * 2 + [(12.0, 40.0)] * 2 + [(24.0, 80.0)]
    assert 0.25 <= waits[3] <= 0.5, "after a connection that was lost, the next round starts soon"
    assert attempts[7][0] != attempts[6][0], "the endpoint lost is tried last"
    assert attempts[7][1:] == (3.0, 10.0), "and the timeouts are short again"


def test_a_single_endpoint_waits_as_long_as_grpc_tries():
    events = run_rounds(Replicas("127.0.0.1:5001", backoff_max_s=1.0), [False, False, True])
    assert [e for e in events if isinstance(e, tuple)] == [("127.0.0.1:5001", None, None)] * 3
