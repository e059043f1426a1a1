from __future__ import annotations

import re

import pytest

from edgefleet.fleet.errors import ConfigError
from edgefleet.fleet.presence import Presence, Status

NOW = 1_000_000.0


@pytest.mark.parametrize(("age_s", "status"), [
    (None, Status.OFFLINE),  # never seen
    (0.0, Status.ONLINE),
    (15.0, Status.ONLINE),   # 3 intervals of 5 s: still ONLINE at the threshold
    (15.1, Status.STALE),
    (50.0, Status.STALE),
    (50.1, Status.OFFLINE),
])
def test_default_thresholds_are_3_and_10_heartbeat_intervals(age_s, status):
    presence = Presence.for_heartbeat(5)
    assert presence.status(None if age_s is None else NOW - age_s, now=NOW) == status


def test_explicit_thresholds_override_the_defaults():
    presence = Presence.for_heartbeat(5, stale_after_s=2, offline_after_s=4)
    assert [presence.status(NOW - age, now=NOW) for age in (1, 3, 5)] == [Status.ONLINE, Status.STALE, Status.OFFLINE]
    assert presence.sweep_interval_s == 0.5


@pytest.mark.parametrize(("interval", "stale", "offline", "says"), [
    (0, None, None, "heartbeat interval must be > 0"),
    (5, 20, 10, "need 0 < stale-after < offline-after, got 20 s and 10 s"),
    (5, -1, 10, "need 0 < stale-after < offline-after"),
])
def test_thresholds_out_of_order_are_a_config_error(interval, stale, offline, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        Presence.for_heartbeat(interval, stale, offline)
