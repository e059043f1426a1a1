"""The retention policy and the sweeper's settings. What a sweep removes, and health history, on both backends:
tests/contract/test_history.py."""
from __future__ import annotations

import argparse
import math

import pytest

from edgefleet.fleet.errors import ConfigError
from edgefleet.fleet.retention import RetentionPolicy, RetentionSweeper, days_arg

T0 = 1_699_999_200  # a whole hour (2023-11-14 22:00 UTC)
MINUTE, HOUR, DAY = 60, 3600, 86_400


# ---- policy ----

@pytest.mark.parametrize(("options", "says"), [
    ({"detections_days": -1}, "detections_days must be a number >= 0"),
    ({"health_days": math.nan}, "health_days"),
    ({"health_days": math.inf}, "health_days"),
    ({"events_days": -0.5}, "events_days"),
    ({"detections_days": "30"}, "detections_days"),
    ({"detections_days": True}, "detections_days"),
    ({"raw_health_hours": 0}, "raw_health_hours must be a number > 0"),
    ({"minute_health_days": -7}, "minute_health_days"),
    ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1"),
    ({"chunk_rows": 10.5}, "chunk_rows"),
    ({"objects_days": -1}, "objects_days must be a number >= 0"),
    ({"snapshots_days": math.nan}, "snapshots_days"),
])
def test_a_bad_policy_is_a_config_error_naming_the_setting(options, says):
    with pytest.raises(ConfigError, match=says):
        RetentionPolicy(**options)


@pytest.mark.parametrize(("options", "keep"), [
    ({}, (DAY, 7 * DAY, 90 * DAY)),
    ({"health_days": 0}, (DAY, 7 * DAY, None)),
    ({"health_days": 3}, (DAY, 3 * DAY, 3 * DAY)),  # shorter history shortens the finer tiers
    ({"health_days": 0.5}, (DAY / 2, DAY / 2, DAY / 2)),
    ({"raw_health_hours": 6, "minute_health_days": 2}, (6 * HOUR, 2 * DAY, 90 * DAY)),
])
def test_health_tiers_nest(options, keep):
    assert RetentionPolicy(**options).health_keep_s() == keep


@pytest.mark.parametrize(("options", "detections", "events"), [
    ({}, T0 - 30 * DAY, T0 - 30 * DAY),
    ({"detections_days": 0}, None, None),
    ({"detections_days": 7, "events_days": 365}, T0 - 7 * DAY, T0 - 365 * DAY),
    ({"events_days": 0}, T0 - 30 * DAY, None),
])
def test_cutoffs(options, detections, events):
    policy = RetentionPolicy(**options)
    assert (policy.detections_cutoff(T0), policy.events_cutoff(T0)) == (detections, events)


@pytest.mark.parametrize(("options", "objects", "snapshots"), [
    ({}, T0 - 365 * DAY, T0 - 30 * DAY),
    ({"objects_days": 7}, T0 - 7 * DAY, T0 - 7 * DAY),  # no picture outlives its object
    ({"snapshots_days": 0}, T0 - 365 * DAY, T0 - 365 * DAY),
    ({"objects_days": 0, "snapshots_days": 0}, None, None),
    ({"objects_days": 0}, None, T0 - 30 * DAY),
])
def test_objects_and_snapshots_cutoffs(options, objects, snapshots):
    policy = RetentionPolicy(**options)
    assert (policy.objects_cutoff(T0), policy.snapshots_cutoff(T0)) == (objects, snapshots)


@pytest.mark.parametrize(("text", "days"), [("30", 30.0), ("0", 0.0), ("0.5", 0.5)])
def test_days_arg_accepts(text, days):
    assert days_arg("--retention-days")(text) == days


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "a month", ""])
def test_days_arg_refuses_naming_the_flag(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--retention-days must be a number of days >= 0"):
        days_arg("--retention-days")(text)


@pytest.mark.parametrize("every_s", [0, -1, math.inf, "3600"])
def test_a_sweeper_needs_a_positive_interval(every_s):
    with pytest.raises(ConfigError, match="every_s"):
        RetentionSweeper(None, RetentionPolicy(), every_s)
