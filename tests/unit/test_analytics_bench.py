"""scripts/bench/analytics.py's scoring on crafted scenes: which object a count belongs to, how far apart a
count and a crossing may be, and the classes --explain gives misses and counts."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.analytics import LineCrossing
from edgefleet.models.detections import Detections

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def _bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_analytics", BENCH / "analytics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _bench()
LINE_X = 0.5 * 1920  # scenes.LINES["x50"]


def box(x, h=100.0):
    """A box whose bottom centre is (x, 600)."""
    return [x - 20, 600 - h, x + 20, 600]


FRAMES = 300


def scene(visible):
    """Object 1 walking right at 2 px a frame, across x50 on frame 150, in view on the frames where
    `visible(frame)`."""
    xs = [LINE_X + 2 * (f - 150) for f in range(FRAMES)]
    gt_ids = [np.array([1] if visible(f) else [], np.int64) for f in range(FRAMES)]
    gt_xyxy = [np.array([box(xs[f])] if visible(f) else [], np.float32).reshape(-1, 4) for f in range(FRAMES)]
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32))
    return bench.Scene(bench.SceneSpec(objects=1, frames=FRAMES), gt_ids, gt_xyxy, [empty] * FRAMES, {}), xs


def tracked(xs, ids_at):
    """Published rows: `ids_at(frame)` the track id on that frame (None: no row), at the true box."""
    return [(np.array([ids_at(f)], np.int64), np.array([box(xs[f])], float)) if ids_at(f) is not None
            else (np.zeros(0, np.int64), np.zeros((0, 4))) for f in range(len(xs))]


def crossing(frame, track):
    return LineCrossing("scene", "x50", 0, "out", track, "person", frame, frame / 30)  # rightwards: out


def test_a_count_made_while_its_object_is_hidden_belongs_to_the_object_its_track_followed():
    sc, xs = scene(lambda f: not 151 <= f < 160)  # behind a pillar just past the line
    rows = tracked(xs, lambda f: 5)  # the track goes on, predicted, while the object is hidden
    ident = bench.identities(sc, rows)
    assert ident[155] == {5: None}  # its box overlaps no object in view
    assert bench.track_object(ident, 155, 5) == 1
    assert bench.track_object(ident, 155, 5, attribution="frame") is None
    truth = [crossing(150, 1)]
    by_track = bench.score_lines(sc, truth, [crossing(155, 5)], rows)
    by_frame = bench.score_lines(sc, truth, [crossing(155, 5)], rows, attribution="frame")
    assert (by_track["matched"], by_track["spurious"]) == (1, 0)
    assert (by_frame["matched"], by_frame["spurious"]) == (0, 1)


def test_the_match_window_counts_the_frames_the_object_is_in_view():
    sc, xs = scene(lambda f: not 148 <= f < 288)
    apart = bench._apart(sc)
    assert apart(1, 140, 299) == 7 + 12  # frames 141..147 and 288..299
    assert apart(1, 299, 140) == 19
    rows = tracked(xs, lambda f: 5 if f < 148 or f >= 288 else None)
    late = bench.score_lines(sc, [crossing(150, 1)], [crossing(288, 5)], rows)  # 138 frames on, 1 in view
    assert late["all_matched"] == 1


def test_explain_names_an_id_switch_at_the_line_and_a_count_of_a_false_track():
    sc, xs = scene(lambda f: True)
    rows = tracked(xs, lambda f: 5 if f < 146 else None if f < 154 else 6)  # lost at the line, found as 6
    layout = bench._explain_context(sc, bench.Options(explain=True))
    truth = [crossing(150, 1)]
    missed = bench.score_lines(sc, truth, [], rows, explain=layout)
    assert missed["miss_id_switch"] == 1 and sum(v for k, v in missed.items() if k.startswith("miss_")) == 1
    ghost = [(np.array([7], np.int64), np.array([box(100.0)], float)) for _ in range(FRAMES)]
    false = bench.score_lines(sc, truth, [crossing(150, 7)], ghost, explain=layout)
    assert false["count_no_object"] == 1 and false["spurious"] == 1


def _line_score(objects, seeds, interval):
    totals = {"matched": 0, "true_crossings": 0, "double": 0}
    for seed in seeds:
        sc = bench.make_scene(bench.SceneSpec(objects=objects, frames=600, seed=seed))
        events, rows, _ = bench.replay(sc, interval, 30.0)
        result = bench.score_lines(sc, bench.true_events(sc), events, rows)
        for name in totals:
            totals[name] += result[name]
    return totals


def test_the_pillar_by_the_zigzag_line_costs_no_crossing_at_10_objects():
    """Seed 1's walker lost at the pillar right past the zigzag line and found under a new id: counted now
    (the evaluator without hand-off missed it: 38 of 39 at interval 1, below the 98 % target)."""
    for interval, target in ((1, 0.98), (3, 0.95)):
        score = _line_score(10, (0, 1), interval)
        assert score["matched"] >= target * score["true_crossings"], (interval, score)
        assert score["double"] <= 0.01 * score["true_crossings"], (interval, score)


@pytest.mark.slow
def test_the_crowd_meets_the_line_targets():
    """200 objects, a pillar over line x15: 94.2 % / 93.8 % at intervals 1 / 3 without the hand-off and
    the longer line memory."""
    for interval, target in ((1, 0.98), (3, 0.95)):
        score = _line_score(200, (0,), interval)
        assert score["matched"] >= target * score["true_crossings"], (interval, score)
        assert score["double"] <= 0.01 * score["true_crossings"], (interval, score)
