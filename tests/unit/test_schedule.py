from __future__ import annotations

import numpy as np
import pytest

from edgefleet.adaptive.schedule import FrameScheduler, MotionGate


def run(scheduler: FrameScheduler, images) -> list[bool]:
    decisions = []
    for image in images:
        detect = scheduler.should_detect(image)
        if detect:
            scheduler.detected(image)
        else:
            scheduler.skipped()
        decisions.append(detect)
    return decisions


def still(n: int, value: int = 100) -> list[np.ndarray]:
    return [np.full((72, 128, 3), value, np.uint8) for _ in range(n)]


@pytest.mark.parametrize(
    "interval, expected",
    [
        (1, [True] * 7),
        (2, [True, False, True, False, True, False, True]),
        (3, [True, False, False, True, False, False, True]),
    ],
)
def test_detect_interval(interval, expected):
    assert run(FrameScheduler(detect_interval=interval), still(7)) == expected


def test_motion_gate_skips_a_static_scene_but_refreshes_every_max_interval():
    scheduler = FrameScheduler(motion_gate=MotionGate(threshold=2.0), max_interval=5)
    assert run(scheduler, still(11)) == [True, False, False, False, False, True, False, False, False, False, True]


def test_motion_gate_detects_when_the_scene_changes():
    frames = still(4)
    moved = still(1)[0]
    moved[20:50, 30:90] = 250  # something entered
    frames.append(moved)
    scheduler = FrameScheduler(motion_gate=MotionGate(threshold=2.0), max_interval=30)
    assert run(scheduler, frames) == [True, False, False, False, True]


def test_gate_respects_the_interval_too():
    frames = [np.full((72, 128, 3), 10 * i, np.uint8) for i in range(6)]  # changes every frame
    scheduler = FrameScheduler(detect_interval=2, motion_gate=MotionGate(threshold=2.0))
    assert run(scheduler, frames) == [True, False, True, False, True, False]


@pytest.mark.parametrize("kwargs", [{"detect_interval": 0}, {"detect_interval": 5, "max_interval": 3}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        FrameScheduler(**kwargs)


def test_a_new_interval_applies_from_the_next_frame_and_widens_max_interval():
    scheduler = FrameScheduler(detect_interval=2)
    assert run(scheduler, still(3)) == [True, False, True]
    scheduler.set_interval(40)
    assert scheduler.max_interval == 40
    assert run(scheduler, still(41)) == [False] * 39 + [True, False]
    with pytest.raises(ValueError):
        scheduler.set_interval(0)


def test_served_streams_follow_the_agents_detect_interval():
    """A plan change (operator override, runtime controller) reaches the streams a client feeds
    through the inference service, not only the agent's own sources."""
    from edgefleet.agent.inference import InferenceCore

    core = InferenceCore(lambda images: [], lambda: [], scheduler_factory=lambda: FrameScheduler(1))
    try:
        served = core.claim("door", "test")
        core.set_detect_interval(3)
        assert served.scheduler.detect_interval == 3
        assert run(served.scheduler, still(4)) == [True, False, False, True]
    finally:
        core.stop()
