"""The zone and line evaluator: crossings both ways, jitter, polylines, predicted frames, dwell, occupancy, counts."""
import numpy as np
import pytest

from edgefleet.agent.analytics import Analytics, LineCrossing, MinuteCounts, StreamEvaluator, Totals, ZoneEvent
from edgefleet.agent.errors import ConfigError
from edgefleet.agent.zones import StreamAnalytics

SIZE = (1000, 1000)


def box_at(x, y, w=40, h=100):
    """A box whose bottom centre is (x, y)."""
    return [x - w / 2, y - h, x + w / 2, y]


def evaluator(totals=None, **kw):
    return StreamEvaluator("cam0", StreamAnalytics.model_validate({"units": "pixels", **kw}), totals=totals)


def walk(ev, paths, labels=None, start=0, t0=1000.0, fps=10.0):
    """Feed per-frame positions {track: (x, y)} (a list per frame); all events."""
    events = []
    for i, frame in enumerate(paths):
        ids = np.array(list(frame), np.int64)
        xyxy = np.array([box_at(*frame[t]) for t in frame], float).reshape(-1, 4)
        lab = [(labels or {}).get(t, "person") for t in frame]
        events += ev.update(start + i, t0 + (start + i) / fps, xyxy, ids, lab, SIZE)
    return events


DOOR = {"door": {"points": [[100, 500], [900, 500]], "margin": 0.15}}  # 15 px for these 100 px boxes


def test_a_line_counts_each_crossing_once_in_both_directions():
    ev = evaluator(lines=DOOR)
    down = [{1: (500, y)} for y in range(400, 601, 20)]
    events = walk(ev, down + down[::-1])
    crossings = [e for e in events if isinstance(e, LineCrossing)]
    assert [(c.direction, c.track_id, c.segment) for c in crossings] == [("in", 1, 0), ("out", 1, 0)]


def test_jitter_on_the_line_counts_nothing_and_a_real_crossing_once():
    ev = evaluator(lines=DOOR)
    jitter = [{1: (500, 500 + d)} for d in [-30, -20, -8, 6, -5, 9, -10, 12, -3, 8, 4] * 3]
    assert walk(ev, jitter) == []
    events = walk(ev, [{1: (500, 560)}, {1: (500, 490)}, {1: (500, 510)}, {1: (500, 495)}], start=len(jitter))
    assert [e.direction for e in events] == ["in"]


def test_without_a_margin_jitter_counts_every_wobble():
    ev = evaluator(lines={"door": {"points": [[100, 500], [900, 500]], "margin": 0}})
    events = walk(ev, [{1: (500, 500 + d)} for d in [-5, 5, -5, 5]])
    assert [e.direction for e in events] == ["in", "out", "in"]


def test_passing_beyond_the_end_of_a_segment_is_no_crossing():
    ev = evaluator(lines=DOOR)
    assert walk(ev, [{1: (950, 400)}, {1: (950, 600)}, {1: (500, 600)}]) == []


def test_a_polyline_counts_once_per_segment_crossed():
    ev = evaluator(lines={"fence": {"points": [[100, 500], [500, 500], [500, 900]]}})
    events = walk(ev, [{1: (300, 400)}, {1: (300, 600)}, {1: (700, 700)}])
    assert [(e.segment, e.direction) for e in events] == [(0, "in"), (1, "out")]


def test_class_filters_count_only_their_labels():
    ev = evaluator(lines={"door": {"points": [[100, 500], [900, 500]], "labels": ["bicycle"]}})
    events = walk(ev, [{1: (300, 400), 2: (600, 400)}, {1: (300, 600), 2: (600, 600)}], labels={2: "bicycle"})
    assert [(e.track_id, e.label) for e in events] == [(2, "bicycle")]


def test_zone_enter_exit_dwell_and_occupancy():
    ev = evaluator(zones={"shop": {"polygon": [[200, 200], [800, 200], [800, 800], [200, 800]]}})
    frames = [{1: (100, 500), 2: (500, 500)}, {1: (300, 500), 2: (500, 500)}] + [{1: (300, 500), 2: (500, 500)}] * 8
    frames += [{1: (900, 500), 2: (500, 500)}]
    events = [e for e in walk(ev, frames) if isinstance(e, ZoneEvent)]
    assert [(e.kind, e.track_id, e.occupancy) for e in events] == [("enter", 2, 1), ("enter", 1, 2), ("exit", 1, 1)]
    assert events[2].dwell_s == pytest.approx(0.9)  # frames 1..10 at 10 fps
    assert ev.occupancy() == {"shop": 1}


def test_a_lost_track_leaves_its_zones_at_its_last_time():
    ev = StreamEvaluator("cam0", StreamAnalytics.model_validate(
        {"units": "pixels", "zones": {"shop": {"polygon": [[200, 200], [800, 200], [800, 800], [200, 800]]}}}),
        lost_frames=5, totals=None)
    walk(ev, [{1: (500, 500)}] * 3)
    events = walk(ev, [{}] * 7, start=3)
    assert [(e.kind, e.frame_index, e.dwell_s) for e in events] == [("exit", 2, pytest.approx(0.2))]
    assert ev.occupancy() == {"shop": 0}


def test_predicted_rows_count_like_detected_ones_and_a_returning_track_keeps_its_side():
    """The evaluator sees the tracker's rows, predicted or not; a track gone for a few frames and back
    on the other side (within lost_frames) still counts its crossing."""
    ev = evaluator(lines=DOOR)
    events = walk(ev, [{1: (500, 400)}, {}, {}, {1: (500, 600)}])
    assert [e.direction for e in events] == ["in"]


def approach(track, y0=380, step=10, frames=12, x=500):
    """A track walking down towards DOOR (y = 500) at `step` px a frame from y0: its frames."""
    return [{track: (x, y0 + step * i)} for i in range(frames)]


def test_a_track_unseen_longer_than_lost_frames_keeps_its_side_and_counts_on_its_return():
    """ByteTrack may give an id back after its published rows stopped for more than LOST_FRAMES (it
    tracks weak detections it does not publish): the side is kept for LINE_MEMORY_FRAMES."""
    from edgefleet.agent.analytics import LINE_MEMORY_FRAMES, LOST_FRAMES
    ev = evaluator(lines=DOOR)
    gone = LOST_FRAMES + 10
    events = walk(ev, [{1: (500, 400)}] + [{}] * gone + [{1: (500, 600)}])
    assert [(e.direction, e.track_id, e.frame_index) for e in events] == [("in", 1, gone + 1)]
    late = evaluator(lines=DOOR)
    assert walk(late, [{1: (500, 400)}] + [{}] * (LINE_MEMORY_FRAMES + 1) + [{1: (500, 600)}]) == []


def test_a_new_track_beyond_the_line_where_a_lost_one_was_heading_counts_its_crossing_once():
    """An object lost at the line (behind a pillar) and found again past it under a new id: the new
    track takes the lost one's side, so the crossing counts, once, under the new id; the lost id
    coming back later counts nothing more."""
    ev = evaluator(lines=DOOR)
    before = approach(1)  # y 380 .. 490: last seen inside the 15 px band's near side at 470
    hidden = [{}] * 20  # would walk 200 px: to about 690
    after = [{2: (500, 690 + 10 * i)} for i in range(5)]
    events = walk(ev, before + hidden + after)
    assert [(e.direction, e.track_id, e.frame_index) for e in events] == [("in", 2, len(before) + len(hidden))]
    back = walk(ev, [{1: (500, 760)}, {1: (500, 770)}], start=len(before + hidden + after))
    assert back == []


def test_no_hand_off_far_from_where_the_lost_track_was_heading_nor_after_handoff_frames():
    from edgefleet.agent.handoff import HANDOFF_FRAMES
    far = evaluator(lines=DOOR)
    sideways = [{2: (850, 690 + 10 * i)} for i in range(5)]  # 350 px to the side of the lost track's path
    assert walk(far, approach(1) + [{}] * 20 + sideways) == []
    stale = evaluator(lines=DOOR)
    slow = [{1: (500, 480 + i * 0.05)} for i in range(12)]  # stands still before the line
    assert walk(stale, slow + [{}] * (HANDOFF_FRAMES + 1) + [{2: (500, 520)}, {2: (500, 530)}]) == []
    near = evaluator(lines=DOOR)
    assert [e.track_id for e in walk(near, slow + [{}] * 20 + [{2: (500, 520)}, {2: (500, 530)}])] == [2]


def test_no_hand_off_from_a_track_seen_just_before_the_new_one_appears():
    """A track published a frame ago was beside the new one while the tracker confirmed it (two detected
    frames in a row): they are two objects, one standing before the line and one past it."""
    from edgefleet.agent.handoff import HANDOFF_MIN_GAP
    ev = evaluator(lines=DOOR)
    standing = [{1: (500, 480)}] * 12
    gap = [{}] * (HANDOFF_MIN_GAP - 2)
    assert walk(ev, standing + gap + [{2: (500, 520)}, {2: (500, 525)}]) == []


def test_a_hand_off_past_the_end_of_a_segment_counts_nothing():
    ev = evaluator(lines=DOOR)  # DOOR runs from x 100 to 900
    walk_by = [{1: (960, 380 + 10 * i)} for i in range(12)]
    assert walk(ev, walk_by + [{}] * 20 + [{2: (960, 690)}, {2: (960, 700)}]) == []


SHOP = {"shop": {"polygon": [[200, 200], [800, 200], [800, 800], [200, 800]]}}


def test_a_new_track_where_a_lost_one_was_heading_in_a_zone_stays_in_the_visit():
    """An object walking through a zone, lost for 10 frames (under the lost-track limit) and found again
    under a new id where it was heading: one entry, one exit (under the new id) with the whole dwell."""
    ev = evaluator(zones=SHOP)
    before = [{1: (100 + 20 * i, 500)} for i in range(15)]  # enters at x 300 (frame 10)
    after = [{2: (100 + 20 * i, 500)} for i in range(25, 40)]  # leaves at x 820 past 800's margin
    events = walk(ev, before + [{}] * 10 + after)
    assert [(e.kind, e.track_id) for e in events] == [("enter", 1), ("exit", 2)]
    assert events[1].dwell_s == pytest.approx((events[1].frame_index - events[0].frame_index) / 10)
    assert ev.occupancy() == {"shop": 0}
    plain = StreamEvaluator("cam0", StreamAnalytics.model_validate({"units": "pixels", "zones": SHOP}),
                            totals=None, handoff=False)
    assert [(e.kind, e.track_id) for e in walk(plain, before + [{}] * 10 + after)] == \
        [("enter", 1), ("enter", 2), ("exit", 2)]  # without: two entries for one visit...
    assert plain.occupancy() == {"shop": 1}  # ...and the lost id still counted inside


def test_no_zone_hand_off_to_a_track_elsewhere_nor_after_the_lost_one_left():
    from edgefleet.agent.analytics import LOST_FRAMES
    far = evaluator(zones=SHOP)
    before = [{1: (100 + 20 * i, 500)} for i in range(15)]
    elsewhere = [{2: (600, 300 + 5 * i)} for i in range(5)]  # 200 px off the lost one's path
    assert [e.track_id for e in walk(far, before + [{}] * 10 + elsewhere) if e.kind == "enter"] == [1, 2]
    late = evaluator(zones=SHOP)
    standing = [{1: (500, 500)}] * 12
    events = walk(late, standing + [{}] * (LOST_FRAMES + 2) + [{2: (500, 500)}, {2: (500, 500)}])
    assert [(e.kind, e.track_id) for e in events] == [("enter", 1), ("exit", 1), ("enter", 2)]


def test_without_hand_off_a_new_id_has_no_side():
    """The ground truth's evaluator (scripts/bench/scenes.true_events) runs without hand-off: its ids are exact."""
    ev = StreamEvaluator("cam0", StreamAnalytics.model_validate({"units": "pixels", "lines": DOOR}),
                         totals=None, handoff=False)
    assert walk(ev, approach(1) + [{}] * 20 + [{2: (500, 690 + 10 * i)} for i in range(5)]) == []


def test_totals_and_minute_counts():
    totals = Totals()
    ev = evaluator(totals, lines=DOOR, zones={"shop": {"polygon": [[0, 0], [1000, 0], [1000, 450], [0, 450]]}})
    events = walk(ev, [{1: (500, 400), 2: (600, 600)}, {1: (500, 600), 2: (600, 400)}], t0=119.95)
    crossings, entries, occupancy = totals.snapshot()
    assert crossings == {("cam0", "door", "person", "in"): 1, ("cam0", "door", "person", "out"): 1}
    assert entries == {("cam0", "shop", "person"): 2} and occupancy == {("cam0", "shop"): 1}
    counts = MinuteCounts()
    counts.add(events)  # frame 0 at 119.95 s (minute 60), frame 1 at 120.05 s (minute 120)
    assert [(r.minute, r.kind, r.name, r.direction, r.count) for r in counts.take(now=120.0)] == [
        (60, "zone", "shop", "enter", 1)]
    assert {(r.minute, r.kind, r.name, r.direction, r.count) for r in counts.take()} == {
        (120, "line", "door", "in", 1), (120, "line", "door", "out", 1), (120, "zone", "shop", "enter", 1)}
    assert counts.take() == []
    bounded = MinuteCounts(max_rows=2)
    bounded.add(events)
    assert [(r.minute, r.kind) for r in bounded.take()] == [(120, "line"), (120, "zone")] and bounded.dropped == 2


def test_analytics_skips_streams_without_shapes_and_refuses_pixels_outside_the_frame():
    a = Analytics({"cam0": StreamAnalytics.model_validate({"units": "pixels", "lines": DOOR}),
                   "cam1": StreamAnalytics()}, totals=None)
    assert list(a.evaluators) == ["cam0"]
    a.update("cam1", 0, 0.0, (640, 480), np.zeros((0, 4)), np.zeros(0, np.int64), [])
    with pytest.raises(ConfigError, match="stream 'cam0': line 'door': point \\(100, 500\\) is outside the 640x480"):
        a.update("cam0", 0, 0.0, (640, 480), np.zeros((0, 4)), np.zeros(0, np.int64), [])


def test_the_agent_metrics_report_crossings_entries_and_occupancy():
    from edgefleet.agent.metrics import AgentMetrics
    totals = Totals()
    ev = evaluator(totals, lines=DOOR, zones={"shop": {"polygon": [[0, 0], [1000, 0], [1000, 450], [0, 450]]}})
    walk(ev, [{1: (500, 400)}, {1: (500, 600)}, {1: (500, 400)}, {1: (500, 600)}])
    text = AgentMetrics(lambda: {}, lambda: {}, totals).render()
    assert 'edgefleet_agent_crossings_total{direction="in",label="person",line="door",stream="cam0"} 2.0' in text
    assert 'edgefleet_agent_crossings_total{direction="out",label="person",line="door",stream="cam0"} 1.0' in text
    assert 'edgefleet_agent_zone_entries_total{label="person",stream="cam0",zone="shop"} 2.0' in text
    assert 'edgefleet_agent_zone_occupancy{stream="cam0",zone="shop"} 0.0' in text


def _bench():
    """scripts/bench/analytics.py and scenes.py, imported as the benchmark runs them."""
    import importlib.util
    import sys
    from pathlib import Path
    bench_dir = Path(__file__).resolve().parents[2] / "scripts" / "bench"
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location("bench_analytics", bench_dir / "analytics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_meets_the_line_targets_on_one_scene_and_its_scoring_sees_double_counts():
    bench = _bench()
    scene = bench.make_scene(bench.SceneSpec(objects=50, frames=600, seed=0))
    truth = bench.true_events(scene)
    for interval, target in ((1, 0.98), (3, 0.95)):
        events, rows, _ = bench.replay(scene, interval, 30.0)
        lines = bench.score_lines(scene, truth, events, rows)
        assert lines["true_crossings"] >= 50
        assert lines["matched"] >= target * lines["true_crossings"], (interval, lines)
        assert lines["double"] <= 0.01 * lines["true_crossings"], (interval, lines)
    doubled = bench.score_lines(scene, truth, events + events, rows)  # every count twice: the scoring must say so
    assert doubled["double"] >= lines["matched"]
    zones = bench.score_zones(scene, truth, events, rows)
    assert zones["dwell_matched_n"] >= 0.9 * zones["true_visits"]
