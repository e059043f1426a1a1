"""ListObjects' page tokens, CountObjects' grouping and the requests' checks (fleet.objects_api)."""
from __future__ import annotations

import pytest

from edgefleet.fleet.errors import InvalidArgument
from edgefleet.fleet.object_queries import CountBucketRow, ObjectCursor
from edgefleet.fleet.objects_api import (
    Grouping,
    capture_command,
    count_query,
    cursor_of,
    grouping,
    page_token,
    regroup,
)
from edgefleet.v1 import fleet_pb2


@pytest.mark.parametrize("cursor", [
    ObjectCursor(1_764_979_200.123456, "cam-07-9f1e2d", "1764979200123-a1b2c3"),
    ObjectCursor(0.0, "", ""),
    ObjectCursor(5.5, "dévice \"quoted\"", "x" * 40),
])
def test_a_page_token_gives_back_its_cursor(cursor):
    token = page_token(cursor)
    assert cursor_of(token) == cursor
    assert token.isascii() and " " not in token


@pytest.mark.parametrize("token", ["nonsense", "o1.", "o1.!!!!", "o1.bnVsbA", "o1.WzEsMl0", "o1.WyJ4IiwiYSIsImIiXQ"])
def test_a_token_it_did_not_make_is_invalid_argument_naming_page_token(token):
    with pytest.raises(InvalidArgument, match="page_token"):
        cursor_of(token)


def test_no_token_is_the_first_page():
    assert cursor_of("") is None


@pytest.mark.parametrize("group_by, expected", [
    ([], Grouping()),
    (["device"], Grouping(device=True)),
    (["stream", "label:site"], Grouping(stream=True, label_key="site")),
    (["device", "stream", "label:site"], Grouping(True, True, "site")),
])
def test_grouping(group_by, expected):
    assert grouping(group_by) == expected


@pytest.mark.parametrize("group_by", [["site"], ["label:"], ["device", "device"], ["label:a", "label:b"], [""]])
def test_a_bad_grouping_names_the_item(group_by):
    with pytest.raises(InvalidArgument, match="group_by"):
        grouping(group_by)


def row(device: str, stream: str, count: int, start: float | None = 60.0, name: str = "door",
        direction: str = "in") -> CountBucketRow:
    return CountBucketRow(start, device, stream, "line", name, "person", direction, count)


def test_rows_fold_into_their_devices_label_value_and_devices_without_it_into_the_empty_group():
    rows = [row("d1", "", 3), row("d2", "", 4), row("d3", "", 5), row("d1", "", 1, start=120.0)]
    labels = {"d1": "lab", "d2": "lab", "d3": ""}
    got = regroup(rows, Grouping(label_key="site"), labels)
    assert got == [((60.0, "", "", "", "line", "door", "person", "in"), 5),
                   ((60.0, "", "", "lab", "line", "door", "person", "in"), 7),
                   ((120.0, "", "", "lab", "line", "door", "person", "in"), 1)]


def test_device_and_stream_stay_when_asked_for_and_unbucketed_rows_come_first():
    rows = [row("d2", "cam1", 2), row("d1", "cam0", 1, start=None), row("d1", "cam0", 6)]
    got = regroup(rows, Grouping(device=True, stream=True), {})
    assert [(key[0], key[1], key[2], n) for key, n in got] == [(-1.0, "d1", "cam0", 1), (60.0, "d1", "cam0", 6),
                                                              (60.0, "d2", "cam1", 2)]


@pytest.mark.parametrize("field, value, message", [
    ("bucket", "week", "bucket"), ("kind", "polygon", "kind"), ("direction", "up", "direction"),
])
def test_count_request_values_are_checked(field, value, message):
    with pytest.raises(InvalidArgument, match=message):
        count_query(fleet_pb2.CountObjectsRequest(**{field: value}), Grouping())


def test_a_label_grouping_asks_the_store_by_device():
    query = count_query(fleet_pb2.CountObjectsRequest(bucket="hour"), Grouping(stream=True, label_key="site"))
    assert (query.by_device, query.by_stream, query.bucket) == (True, True, "hour")


def test_get_frame_defaults_and_limits():
    command, timeout_s = capture_command(fleet_pb2.GetFrameRequest(device_id="d1"))
    assert (command.action, command.payload, timeout_s) == ("capture_frame", {"stream_id": "", "max_width": 640}, 5.0)
    for request, message in ((fleet_pb2.GetFrameRequest(), "device_id"),
                             (fleet_pb2.GetFrameRequest(device_id="d1", max_width=10_000), "max_width"),
                             (fleet_pb2.GetFrameRequest(device_id="d1", timeout_ms=600_000), "timeout_ms")):
        with pytest.raises(InvalidArgument, match=message):
            capture_command(request)
