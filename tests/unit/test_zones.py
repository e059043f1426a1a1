"""Zones and lines: the settings' checks, the geometry in pixels, the point tests."""
import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.agent.zones import StreamAnalytics, contains, polygon_problem, polyline_problem, reference_points

SQUARE = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]]


def settings(**kw):
    return StreamAnalytics.model_validate(kw)


def test_a_valid_stream_setting_scales_fractions_to_pixels():
    s = settings(zones={"entrance": {"polygon": SQUARE, "labels": ["person"]}},
                 lines={"door": {"points": [[0.2, 0.7], [0.8, 0.7]]}})
    zones, lines = s.geometry(640, 480)
    assert zones[0].polygon.tolist() == [[64, 48], [320, 48], [320, 240], [64, 240]]
    assert zones[0].labels == frozenset({"person"}) and zones[0].point == "bottom-centre"
    assert lines[0].points.tolist() == [[128, 336], [512, 336]]
    assert lines[0].margin == 0.05  # of the object's box height


@pytest.mark.parametrize("zone, fault", [
    ([[0, 0], [1, 1], [1, 0], [0, 1]], "zone 'z': is self-intersecting"),
    ([[0, 0], [1, 1], [0, 0]], "zone 'z': a polygon needs at least 3 distinct points, got 2"),
    ([[0, 0], [0.5, 0.5], [1, 1]], "zone 'z': has no area"),
    ([[0, 0], [1.5, 0], [1, 1]], "zone 'z': point (1.5, 0) is outside the frame"),
    ([[0, 0], [0, 0], [1, 0], [1, 1]], "zone 'z': has a repeated consecutive point"),
])
def test_a_malformed_zone_is_refused_naming_it_and_the_fault(zone, fault):
    with pytest.raises(ValidationError, match=fault.replace("(", r"\(").replace(")", r"\)")):
        settings(zones={"z": {"polygon": zone}})


@pytest.mark.parametrize("points, fault", [
    ([[0.2, 0.7], [0.2, 0.7]], "line 'door': segment 1 has zero length"),
    ([[0.2, 0.7]], "line 'door': a line needs at least 2 points, got 1"),
    ([[0.2, 0.7], [0.5, 0.7], [0.5, 0.7]], "line 'door': segment 2 has zero length"),
    ([[-0.1, 0.7], [0.5, 0.7]], "line 'door': point"),
])
def test_a_malformed_line_is_refused_naming_it_and_the_fault(points, fault):
    with pytest.raises(ValidationError, match=fault):
        settings(lines={"door": {"points": points}})


def test_unknown_keys_units_and_reference_points_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        settings(lines={"door": {"points": [[0, 0], [1, 1]], "colour": "red"}})
    with pytest.raises(ValidationError, match="fraction"):
        settings(units="inches")
    with pytest.raises(ValidationError, match="bottom-centre"):
        settings(lines={"door": {"points": [[0, 0], [1, 1]], "point": "top"}})


def test_pixel_coordinates_are_checked_against_the_frame_when_its_size_is_known():
    s = settings(units="pixels", lines={"door": {"points": [[10, 400], [700, 400]]}})
    with pytest.raises(ValueError, match=r"line 'door': point \(700, 400\) is outside the 640x480 frame"):
        s.geometry(640, 480)
    assert s.geometry(1280, 720)[1][0].points.tolist() == [[10, 400], [700, 400]]


def test_a_concave_polygon_is_simple_and_contains_only_its_inside():
    u_shape = [(0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3)]
    assert polygon_problem(u_shape) is None
    inside = contains(np.array(u_shape, float), np.array([[0.5, 2], [1.5, 2], [2.5, 2], [1.5, 0.5], [4, 1]]))
    assert inside.tolist() == [True, False, True, True, False]


def test_polyline_problems_and_reference_points():
    assert polyline_problem([(0, 0), (1, 0), (1, 1)]) is None
    boxes = np.array([[10, 20, 30, 60]], float)
    assert reference_points(boxes, "bottom-centre").tolist() == [[20, 60]]
    assert reference_points(boxes, "centre").tolist() == [[20, 40]]


def _run_config(tmp_path, text):
    from edgefleet.agent.cli import build_parser
    from edgefleet.agent.flags import parse_args
    path = tmp_path / "agent.yaml"
    path.write_text("controller: localhost:1\nsource: synthetic://640x480\n" + text)
    return parse_args(build_parser(), ["run", "--config", str(path)]).config


def test_agent_yaml_analytics_are_read_per_stream(tmp_path):
    config = _run_config(tmp_path, "analytics:\n  cam0:\n    lines: {door: {points: [[0.2, 0.7], [0.8, 0.7]]}}\n")
    assert config.analytics["cam0"].lines["door"].points == [(0.2, 0.7), (0.8, 0.7)]


@pytest.mark.parametrize("text, fault", [
    ("analytics:\n  cam0:\n    zones: {e: {polygon: [[0, 0], [1, 1], [1, 0], [0, 1]]}}\n",
     "agent.yaml:3: analytics: stream 'cam0': zone 'e': is self-intersecting (edge 1 crosses edge 3)"),
    ("analytics:\n  cam0:\n    lines: {door: {points: [[0.2, 0.7], [0.2, 0.7]]}}\n",
     "agent.yaml:3: analytics: stream 'cam0': line 'door': segment 1 has zero length"),
    ("analytics:\n  cam0:\n    lines: {door: {points: [[0.2, 0.7], [1.2, 0.7]]}}\n",
     "agent.yaml:3: analytics: stream 'cam0': line 'door': point (1.2, 0.7) is outside the frame"),
    ("analytics:\n  cam7:\n    lines: {door: {points: [[0.2, 0.7], [0.8, 0.7]]}}\n",
     "analytics: 'cam7' is not a local stream (streams: cam0)"),
    ("analytics: [cam0]\n", "agent.yaml:3: analytics: must be a mapping of stream ids to settings, got a list"),
])
def test_agent_yaml_refuses_malformed_analytics_with_the_file_line_and_fault(tmp_path, capsys, text, fault):
    with pytest.raises(SystemExit) as exit_:
        _run_config(tmp_path, text)
    assert exit_.value.code == 2
    assert fault in capsys.readouterr().err


def test_a_zones_signed_distance_agrees_with_ray_casting_and_edge_distances():
    from edgefleet.agent.zones import Zone, boundary_distance
    u_shape = np.array([(0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3)], float) * 100
    points = np.random.default_rng(0).uniform(-50, 350, (500, 2))
    expected = np.where(contains(u_shape, points), 1, -1) * boundary_distance(u_shape, points)
    got = Zone("u", u_shape, frozenset(), "centre", 0.0).signed_distance(points)
    assert np.allclose(got, expected)
    assert (got > 0).sum() > 100 and (got < 0).sum() > 100
