"""`edgefleet objects`/`counts`/`snapshot`/`frame`: what the flags ask of the controller, and how a picture is
written (a file that exists is kept unless --force)."""
from __future__ import annotations

import datetime as dt

import pytest

from edgefleet.fleet.cli import build_parser
from edgefleet.fleet.cli_common import CliError, time_arg, write_output
from edgefleet.fleet.cli_objects import counts_request, objects_request


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_counts_flags_become_the_request():
    args = parse("counts", "--select", "site=lab", "--line", "door", "--direction", "in", "--by", "hour",
                 "--group-by", "device,label:site", "--group-by", "stream", "--since", "2h")
    request = counts_request(args)
    assert (request.select, request.kind, request.name, request.direction, request.bucket) == (
        "site=lab", "line", "door", "in", "hour")
    assert list(request.group_by) == ["device", "label:site", "stream"]
    assert request.HasField("since") and not request.HasField("until")


def test_counts_start_at_local_midnight_by_default():
    request = counts_request(parse("counts"))
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    assert request.since.seconds == int(midnight)


def test_today_is_local_midnight_and_a_bad_time_names_the_flag():
    noon = dt.datetime(2026, 5, 1, 12, 30).timestamp()
    assert time_arg("--since", now=lambda: noon)("today") == dt.datetime(2026, 5, 1).timestamp()
    with pytest.raises(Exception, match="--since: 'yesterdayish'"):
        time_arg("--since", now=lambda: noon)("yesterdayish")


@pytest.mark.parametrize("argv, message", [
    (("objects", "--limit", "0"), "--limit"),
    (("objects", "--limit", "1001"), "--limit"),
    (("objects", "--since", "1h", "--until", "2h"), "--until"),
])
def test_objects_flags_out_of_range_are_refused(argv, message):
    with pytest.raises(CliError, match=message):
        objects_request(parse(*argv))


def test_zone_and_line_exclude_each_other_for_counts():
    with pytest.raises(SystemExit):
        parse("counts", "--zone", "a", "--line", "b")


def test_a_picture_never_replaces_a_file_unless_forced(tmp_path):
    target = tmp_path / "p.jpg"
    assert write_output(str(target), b"first", force=False) == str(target)
    with pytest.raises(CliError, match="exists: pass --force"):
        write_output(str(target), b"second", force=False)
    assert target.read_bytes() == b"first"
    write_output(str(target), b"second", force=True)
    assert target.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["p.jpg"]
    with pytest.raises(CliError, match="is a folder"):
        write_output(str(tmp_path), b"x", force=True)
