"""The controller's side of desired configuration: what SetDesiredConfig refuses before storing anything,
what events say of a status, and the drift the TUI shows. What the store keeps (versions, pending,
restarts) is tested on both backends in tests/contract/test_config_audit.py."""
from __future__ import annotations

import pytest

from edgefleet.fleet.errors import InvalidArgument
from edgefleet.fleet.twin import check_request, describe_status
from edgefleet.fleet.twin_store import DeviceConfigView as View


@pytest.mark.parametrize("document, clear, message", [
    ("", False, "document is empty"),
    ("loop: true\n", True, "clear=true removes the document"),
    ("controller: x:1\n", False, "document:1: controller: set on the device only"),
    ("detect-interval: 0\nloop: 3\n", False, "must be >= 1, got 0; document:2: loop: must be true or false"),
    ("detect-interval: [1\n", False, "not valid YAML"),
])
def test_the_controller_refuses_what_it_can_see(document, clear, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_request(document, clear)


def test_what_events_say():
    assert describe_status(View("d", 2, applied_version=2, how="live")) == "runs desired config v2 (live)"
    assert describe_status(View("d", 3, applied_version=2, refused_version=3, errors=("no such file",))) == \
        "refused desired config v3: no such file"


@pytest.mark.parametrize("config, text", [
    ({}, ""),
    ({"desired_version": 2, "applied_version": 2, "in_sync": True, "how": "live"}, "v2 applied, in sync (live)"),
    ({"desired_version": 3, "applied_version": 2}, "v2 applied, v3 desired (not applied yet)"),
    ({"desired_version": 3, "applied_version": 2, "refused_version": 3, "errors": ["no such file"]},
     "v2 applied, v3 desired: refused: no such file"),
])
def test_the_tui_shows_drift(config, text):
    from edgefleet.tui.convert import config_drift
    from edgefleet.v1 import fleet_pb2

    assert config_drift(fleet_pb2.DeviceConfig(**config)) == text
