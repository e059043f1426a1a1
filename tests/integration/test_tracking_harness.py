"""scripts/bench/tracking.py: its scenes, its metric plumbing and one real run end to end.

The metric checks are what make the harness's numbers worth reading: a perfect tracker must
score 1, a tracker that swaps ids must score lower, and skipping detections must cost something.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import tracking  # noqa: E402  (scripts/bench/tracking.py)
from scenes import SceneSpec, make_scene  # noqa: E402  (scripts/bench/scenes.py)

from edgefleet.models.detections import Detections  # noqa: E402

SMALL = SceneSpec(objects=8, frames=120, seed=1)


@pytest.fixture(scope="module")
def scene():
    return make_scene(SMALL)


def perfect_detections(scene) -> list[Detections]:
    """The ground-truth boxes themselves, all confidently detected."""
    return [Detections(xyxy, np.full(len(xyxy), 0.9), np.zeros(len(xyxy), np.int32)) for xyxy in scene.gt_xyxy]


def swap_ids_from(outputs: list, frame: int) -> list:
    """The two ids most often present swapped on every frame from `frame` on (an id switch each)."""
    counts = np.bincount(np.concatenate([ids for ids, _ in outputs]))
    a, b = np.argsort(counts)[-2:]
    swapped = []
    for t, (ids, xyxy) in enumerate(outputs):
        if t >= frame:
            ids = np.where(ids == a, b, np.where(ids == b, a, ids))
        swapped.append((ids, xyxy))
    return swapped


def test_the_scene_is_the_same_for_a_seed_and_has_what_trackers_find_hard(scene):
    again = make_scene(SMALL)
    assert all(np.array_equal(a, b) for a, b in zip(scene.gt_ids, again.gt_ids))
    assert all(np.array_equal(a.xyxy, b.xyxy) for a, b in zip(scene.detections, again.detections))
    stats = scene.stats
    assert stats["gt_tracks"] > SMALL.objects  # objects leave and new ones enter
    assert stats["occluded_frames"] > 0 and stats["weak_detections"] > 0
    assert stats["false_positives"] > 0 and stats["missed"] > 0


def test_ground_truth_scores_perfectly_and_an_id_swap_does_not(scene):
    gt = tracking.ground_truth(scene)
    perfect = tracking.evaluate(gt, gt)
    assert perfect["IDF1"] == 1.0 and perfect["MOTA"] == 1.0 and perfect["HOTA"] > 0.99
    assert perfect["IDSW"] == 0 and perfect["FP"] == 0 and perfect["FN"] == 0
    swapped = tracking.evaluate(gt, swap_ids_from(gt, len(gt) // 2))
    assert swapped["IDSW"] >= 2
    assert swapped["IDF1"] < 0.95 and swapped["HOTA"] < perfect["HOTA"]
    assert swapped["recall"] == 1.0  # the boxes are all still right: only identity is wrong


def test_our_tracker_on_perfect_detections_scores_about_one(scene):
    result = tracking.evaluate(tracking.ground_truth(scene), tracking.run_interval(perfect_detections(scene), 1))
    assert result["IDF1"] > 0.97 and result["MOTA"] > 0.95
    assert result["FP"] == 0


def test_noise_skipped_detections_and_id_swaps_each_cost_idf1(scene):
    gt = tracking.ground_truth(scene)
    every_frame = tracking.run_interval(scene.detections, 1)
    noisy = tracking.evaluate(gt, every_frame)
    assert 0.6 < noisy["IDF1"] < 0.97  # misses, occlusions and clutter are felt, not fatal
    assert tracking.evaluate(gt, tracking.run_interval(scene.detections, 4))["IDF1"] < noisy["IDF1"]
    assert tracking.evaluate(gt, swap_ids_from(every_frame, 30))["IDF1"] < noisy["IDF1"] - 0.05


def test_coasting_a_missed_detection_makes_up_for_the_frames_not_detected(scene):
    """At detect interval 2 a single miss hides an object for 2 frames unless it coasts."""
    gt = tracking.ground_truth(scene)
    without = dataclasses.replace(tracking.OURS, coast_missed_detections=0)
    coasting = tracking.evaluate(gt, tracking.run_interval(scene.detections, 2))
    hidden = tracking.evaluate(gt, tracking.run_interval(scene.detections, 2, without))
    assert coasting["FN"] < hidden["FN"] and coasting["IDF1"] > hidden["IDF1"]
    every_frame = tracking.evaluate(gt, tracking.run_interval(scene.detections, 1, without))
    assert tracking.evaluate(gt, tracking.run_interval(scene.detections, 1)) == every_frame  # nothing to coast


@pytest.mark.data  # Ultralytics' tracker comes with the test extra, not the fast tier's dev venv
def test_every_tracker_is_scored_on_the_rows_it_tracked(scene):
    makers = {tracking.Ours.name: tracking.Ours, "ultralytics": tracking.UltralyticsByteTrack,
              "trackers": tracking.RoboflowTrackers}
    results = tracking.run_interleaved(makers, scene, repeats=1)
    for name, (outputs, seconds) in results.items():
        assert len(outputs) == len(scene) and np.all(seconds > 0)
        for (ids, xyxy), dets in zip(outputs, scene.detections):
            assert len(ids) == len(np.unique(ids)), f"{name}: an id twice in one frame"
            assert all((dets.xyxy == box).all(1).any() for box in xyxy), f"{name}: a box that is not an input row"
        assert tracking.evaluate(tracking.ground_truth(scene), outputs)["IDF1"] > 0.6, name


@pytest.mark.parametrize("losses, chosen", [
    ({1: 0.0, 2: 0.01, 3: 0.019, 4: 0.03}, 3),
    ({1: 0.0, 2: 0.025, 3: 0.01}, 1),   # k and every smaller k must pass
    ({1: 0.0, 2: 0.0}, 2),
])
def test_the_chosen_interval_loses_at_most_two_idf1_points_at_every_density(losses, chosen):
    summaries = [{"detect_interval_idf1": {k: 0.9 - loss for k, loss in losses.items()}},
                 {"detect_interval_idf1": {k: 0.8 for k in losses}}]
    assert tracking.choose_interval(summaries) == chosen


def test_skip_fidelity_is_perfect_at_interval_one_and_lower_when_skipping(scene):
    fidelity = tracking.skip_fidelity(scene.detections, [1, 3])
    assert fidelity[1]["recall"] == 1.0 and fidelity[1]["IDF1"] == 1.0 and fidelity[1]["IDSW"] == 0
    assert fidelity[3]["recall"] < 1.0 and fidelity[3]["IDF1"] < 1.0


@pytest.mark.slow
def test_the_harness_runs_end_to_end_and_writes_json(tmp_path, vtest):
    out = tmp_path / "tracking.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "tracking.py"), "--objects", "6,12", "--frames", "60",
         "--seeds", "0", "--repeats", "1", "--intervals", "1,2,3", "--video", str(vtest), "--video-frames", "15",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [s["objects"] for s in report["summary"]] == [6, 12]
    for summary in report["summary"]:
        assert set(summary["mean"]) == {"edgefleet", "edgefleet-no-refind", "trackers", "ultralytics"}
        for metrics in summary["mean"].values():
            assert 0 < metrics["IDF1"] <= 1 and metrics["MOTA"] <= 1 and 0 < metrics["HOTA"] <= 1
            assert metrics["us_per_update"] > 0
        assert set(summary["versus"]) == {"trackers", "ultralytics"}
        assert list(summary["detect_interval_idf1"]) == ["1", "2", "3"]
    assert report["chosen_interval"] in (1, 2, 3)
    fidelity = report["skip_fidelity"]
    assert fidelity["video"] == "vtest.avi" and fidelity["frames"] == 15
    assert fidelity["intervals"]["1"]["recall"] == 1.0 and fidelity["intervals"]["1"]["IDF1"] == 1.0
    assert "| objects | seeds | tracker |" in proc.stderr and "Skip fidelity" in proc.stderr
