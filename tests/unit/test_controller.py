"""adaptive.controller on a simulated loop with a fake clock: one reading per simulated second,
the detector's latency a function of the current rung, the load and the noise."""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import pytest

from edgefleet.adaptive.controller import (
    ControllerConfig,
    ControllerState,
    HealthReading,
    Rung,
    RuntimeController,
    bounded_ladder,
    decide,
    thermal_limits,
)
from edgefleet.adaptive.errors import LadderError

FRAME_MS = 1000 / 15   # 66.7 ms per frame at 15 fps
BASE_MS = {("yolo-s", 640): 40.0, ("yolo-s", 512): 26.0, ("yolo-s", 416): 17.0, ("yolo-s", 320): 10.0,
           ("yolo-n", 320): 4.0}


def make_ladder(expected: bool = True) -> list[Rung]:
    def rung(model, side, k):
        path = f"/models/{model}.onnx"
        return Rung(model, path, side, side, k, BASE_MS[(model, side)] if expected else None,
                    23 if model == "yolo-s" else 22)
    return ([rung("yolo-s", 640, k) for k in (1, 2, 3)] + [rung("yolo-s", s, 3) for s in (512, 416, 320)]
            + [rung("yolo-n", 320, 3)])


def controller(expected: bool = True, **config) -> RuntimeController:
    return RuntimeController(make_ladder(expected), ControllerConfig(frame_budget_ms=FRAME_MS,
                                                                     **thermal_limits("jetson") | config))


def simulate(ctl: RuntimeController, seconds: int, load=lambda t: 1.0, noise=lambda t: 1.0,
             temp=lambda t, rung: None, drops=lambda t, rung: 0, start: int = 0) -> list[dict]:
    """Run the loop for `seconds` simulated seconds; one health reading (and control step) each."""
    trace, dropped = [], 0
    for t in range(start, start + seconds):
        index, rung = ctl.state.rung, ctl.rung
        p95 = BASE_MS[(rung.model, rung.input_width)] * load(t) * noise(t)
        dropped += drops(t, index)
        reading = HealthReading(inference_ms_p95=p95, inference_ms_p50=p95 * 0.8, fps=15.0,
                                frames_dropped=dropped, temperature_c=temp(t, index))
        ctl.update(reading, float(t))
        trace.append({"t": t, "rung": index, "p95": p95, "budget": FRAME_MS * rung.detect_interval})
    return trace


def reversals(events) -> int:
    directions = [e.direction for e in events]
    return sum(1 for a, b in itertools.pairwise(directions) if a != b)


@pytest.mark.parametrize("expected", [True, False], ids=["calibrated", "estimated"])
def test_a_slowdown_steps_down_within_a_minute_and_meets_the_budget(expected):
    ctl = controller(expected)
    trace = simulate(ctl, 300, load=lambda t: 8.0 if t >= 60 else 1.0)
    assert all(row["p95"] <= row["budget"] for row in trace[:60])          # fine before the slowdown
    assert [e.direction for e in ctl.events] == ["down"] * len(ctl.events) and ctl.events
    assert ctl.events[0].time <= 60 + 5 and ctl.events[-1].time <= 60 + 60
    settled = [row for row in trace if row["t"] >= 60 + 60]
    assert all(row["p95"] <= row["budget"] for row in settled)              # budget met from then on
    assert ctl.events[0].cause == "latency" and "over the" in ctl.events[0].reason


@pytest.mark.parametrize("expected", [True, False], ids=["calibrated", "estimated"])
def test_load_removed_steps_back_up_without_oscillating_over_ten_minutes(expected):
    ctl = controller(expected)
    simulate(ctl, 600, load=lambda t: 8.0 if 60 <= t < 240 else 1.0)
    downs = [e for e in ctl.events if e.direction == "down"]
    ups = [e for e in ctl.events if e.direction == "up"]
    assert downs and all(e.time < 240 for e in downs)                        # no step down once the load left
    assert ups and all(e.time >= 240 for e in ups)
    assert reversals(ctl.events) == 1                                        # down, down, ..., up, up, ...
    assert len(ctl.events) == 2 * len(downs) and ctl.state.rung == 0         # back to the plan's rung
    assert all(e.cause == "headroom" for e in ups)


def test_the_plan_rung_is_regained_even_when_it_runs_near_its_headroom():
    ctl = controller(up_ratio=0.8)
    simulate(ctl, 600, load=lambda t: 8.0 if 60 <= t < 200 else 1.3)       # rung 0 at 52 ms: 0.78 of its budget
    assert ctl.state.rung == 0 and reversals(ctl.events) == 1


def test_noise_and_isolated_spikes_cause_no_change():
    rng = random.Random(7)
    noise = {t: rng.lognormvariate(0, 0.25) * (3.0 if t % 13 == 0 else 1.0) for t in range(600)}
    ctl = controller()
    simulate(ctl, 600, noise=noise.__getitem__)
    assert ctl.events == []


@pytest.mark.parametrize("seed", range(8))
def test_heavy_noise_steps_down_at_most_once_and_never_back(seed):
    rng = random.Random(seed)
    noise = {t: rng.lognormvariate(0, 0.35) for t in range(600)}   # +-35% per reading
    ctl = controller()
    simulate(ctl, 600, load=lambda t: 1.2, noise=noise.__getitem__)  # rung 0 at 0.72 of its budget
    assert len(ctl.events) <= 1


def test_noise_near_the_budget_does_not_flap():
    rng = random.Random(11)
    noise = {t: rng.uniform(0.85, 1.15) for t in range(600)}
    ctl = controller()
    simulate(ctl, 600, load=lambda t: 1.58, noise=noise.__getitem__)      # rung 0 at 0.95 of budget +-15%
    assert len(ctl.events) <= 1 and all(e.direction == "down" for e in ctl.events)


def test_heat_steps_down_before_latency_does_and_comes_back_when_cool():
    def temp(t, rung):                      # hotter at higher rungs during a heat wave from t=100 to t=300
        if 100 <= t < 300:
            return {0: 88.0, 1: 83.0}.get(rung, 78.0)
        return 65.0
    ctl = controller()
    trace = simulate(ctl, 600, temp=temp)
    assert all(row["p95"] <= row["budget"] for row in trace)                # latency was never the problem
    first = ctl.events[0]
    assert (first.direction, first.cause, first.to_rung) == ("down", "thermal", 1)
    assert 105 <= first.time <= 110 and "88.0 C" in first.reason
    ups = [e for e in ctl.events if e.direction == "up"]
    assert len(ctl.events) == 2 and ups[0].time >= 300                     # 83 C: no climbing until it cools
    assert ctl.state.rung == 0


def test_critical_temperature_steps_down_at_once_and_keeps_going():
    ctl = controller()
    simulate(ctl, 40, temp=lambda t, rung: 96.0 if 20 <= t < 32 else 60.0)
    critical = [e for e in ctl.events if e.cause == "thermal-critical"]
    assert critical[0].time == 20.0 and [e.time for e in critical] == [20.0, 25.0, 30.0]   # every settle_s
    assert ctl.state.rung == 3


def test_dropped_frames_step_down_and_failed_step_ups_back_off():
    ctl = controller()
    # the detector is fast enough, but at rung 0 the loop drops a quarter of the frames
    simulate(ctl, 600, drops=lambda t, rung: 5 if rung == 0 else 0)
    assert ctl.events[0].cause == "drops" and ctl.events[0].time <= 5
    ups = [e.time for e in ctl.events if e.direction == "up"]
    gaps = [b - a for a, b in itertools.pairwise(ups)]
    assert len(ctl.events) <= 10                                             # bounded over 10 minutes
    assert gaps == sorted(gaps) and gaps[-1] >= 2 * gaps[0]                  # each failed try waits longer


def test_events_say_what_changes_and_serialise():
    ctl = controller()
    simulate(ctl, 400, load=lambda t: 60.0)                                  # everything over: walk to the bottom
    assert [e.to_rung for e in ctl.events] == [1, 2, 3, 4, 5, 6]
    assert [e.changes for e in ctl.events] == [("detect_interval",), ("detect_interval",), ("input_size",),
                                               ("input_size",), ("input_size",), ("model",)]
    assert ctl.events[-1].rung.model_path == "/models/yolo-n.onnx"
    data = json.loads(json.dumps([e.to_dict() for e in ctl.events]))
    assert data[0]["rung"]["detect_interval"] == 2 and data[0]["changes"] == ["detect_interval"]
    gaps = [b.time - a.time for a, b in zip(ctl.events, ctl.events[1:])]
    assert min(gaps) >= ctl.config.min_dwell_s


def test_decide_is_pure():
    ladder, config = make_ladder(), ControllerConfig(frame_budget_ms=FRAME_MS)
    state = ControllerState(rung=0, over_since=0.0, ratios=(3.0, 3.0, 3.0))
    reading = HealthReading(inference_ms_p95=300.0)
    first = decide(state, reading, 10.0, ladder, config)
    assert first == decide(state, reading, 10.0, ladder, config)
    assert state == ControllerState(rung=0, over_since=0.0, ratios=(3.0, 3.0, 3.0))
    assert first[1] is not None and first[0].rung == 1


@pytest.mark.parametrize("median_ratio, kept", [(0.95, True), (0.85, False)])
def test_the_hysteresis_band_keeps_the_over_budget_timer(median_ratio, kept):
    config = ControllerConfig(frame_budget_ms=FRAME_MS)
    state = ControllerState(rung=0, over_since=50.0, ratios=(median_ratio,) * 4)
    reading = HealthReading(inference_ms_p95=median_ratio * FRAME_MS)
    nxt, event = decide(state, reading, 52.0, make_ladder(), config)
    assert event is None and (nxt.over_since == 50.0) is kept


def test_min_dwell_spaces_changes_even_when_readings_are_trusted_at_once():
    ctl = controller(settle_s=0.0, min_readings=1, window=1, step_down_after_s=0.0, min_dwell_s=10.0)
    simulate(ctl, 60, load=lambda t: 60.0)
    assert [e.time for e in ctl.events] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_no_detector_calls_in_the_window_is_no_evidence():
    ctl = controller()
    for t in range(100):
        ctl.update(HealthReading(inference_ms_p95=0.0), float(t))
    assert ctl.events == []


def test_health_reading_from_a_health_sample():
    sample = {"frames_total": 10, "detections_total": 3, "frames_dropped": 4, "outbox_depth": 0, "fps": 14.5,
              "detect_fps": 14.5, "inference_ms_p50": 30.0, "inference_ms_p95": 41.0, "latency_ms_p95": 50.0}
    reading = HealthReading.from_sample(sample, temperature_c=51.0)
    assert reading == HealthReading(41.0, 30.0, 14.5, 4, 51.0)


@pytest.mark.parametrize("bad", [{"frame_budget_ms": 0}, {"clear_ratio": 1.2}, {"up_ratio": 0.95},
                                 {"min_readings": 9}, {"thermal_warn_c": 99.0}])
def test_bad_config_is_refused(bad):
    with pytest.raises(LadderError):
        ControllerConfig(**({"frame_budget_ms": FRAME_MS} | bad))


def test_ladder_and_start_are_checked():
    with pytest.raises(LadderError, match="empty"):
        RuntimeController([], ControllerConfig(frame_budget_ms=FRAME_MS))
    with pytest.raises(LadderError, match="outside"):
        RuntimeController(make_ladder(), ControllerConfig(frame_budget_ms=FRAME_MS), start=7)
    rung = make_ladder()[0]
    assert Rung.from_dict(rung.to_dict()) == rung and replace(rung, detect_interval=2).label().endswith("every 2")


def test_operator_bounds_trim_the_ladder():
    ladder = make_ladder()
    small = bounded_ladder(ladder, max_input_size=416)
    assert [(r.model, r.input_width) for r in small] == [("yolo-s", 416), ("yolo-s", 320), ("yolo-n", 320)]
    every_2nd = bounded_ladder(ladder, min_detect_interval=2, max_detect_interval=2)
    assert [(r.model, r.input_width, r.detect_interval) for r in every_2nd] == [
        ("yolo-s", 640, 2), ("yolo-s", 512, 2), ("yolo-s", 416, 2), ("yolo-s", 320, 2), ("yolo-n", 320, 2)]
    with pytest.raises(LadderError, match="no rung"):
        bounded_ladder(ladder, max_input_size=128)
    with pytest.raises(LadderError, match="min_detect_interval"):
        bounded_ladder(ladder, min_detect_interval=3, max_detect_interval=2)
