"""The runtime controller in the agent's loop: what each kind of step changes, and when."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgefleet.adaptive.controller import ControllerConfig, Rung, RuntimeController
from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.convert import command_from_pb
from edgefleet.agent.options import Adaptation, RunOptions
from edgefleet.agent.sources import open_source
from edgefleet.agent.supervisor import Agent
from edgefleet.models.base import Detector
from edgefleet.models.detections import Detections
from edgefleet.v1 import agent_pb2, types_pb2

LADDER = [
    Rung("net", "net.onnx", 320, 320, 1),
    Rung("net", "net.onnx", 320, 320, 3),
    Rung("net", "net.onnx", 256, 256, 3),
    Rung("small", "small.onnx", 256, 256, 3),
]
# acts on the first reading over budget: no settling, dwell or persistence
EAGER = ControllerConfig(frame_budget_ms=10.0, step_down_after_s=0.0, min_dwell_s=0.0, settle_s=0.0,
                         window=1, min_readings=1)


class FakeDetector(Detector):
    def __init__(self, rung: Rung):
        self.names = ["person"]
        self.rung = rung
        self.input_size = rung.input_size
        self.closed = False
        self.loaded_on = threading.current_thread().name

    def detect_batch(self, frames):
        return [Detections.empty() for _ in frames]

    def close(self) -> None:
        self.closed = True


class Loader:
    """load_detector for the Adaptation: blocks until `release` is set, can be told to fail."""

    def __init__(self, fail: bool = False):
        self.release = threading.Event()
        self.fail = fail
        self.loaded: list[FakeDetector] = []

    def __call__(self, rung: Rung) -> FakeDetector:
        assert self.release.wait(5), "the test never released the load"
        if self.fail:
            raise RuntimeError(f"cannot load {rung.model_path}")
        detector = FakeDetector(rung)
        self.loaded.append(detector)
        return detector


def make_agent(tmp_path, loader: Loader, streams: int = 2, start: int = 0) -> Agent:
    controller = RuntimeController(LADDER, EAGER, start=start)
    options = RunOptions(controller="127.0.0.1:1", sources=["synthetic://64x64?frames=5"] * streams,
                         state_dir=tmp_path / "agent")
    adaptation = Adaptation(controller, loader, every_s=1.0)
    return Agent(options, FakeDetector(controller.rung), open_source, HardwareProfile(), DevicePlan(),
                 adaptation=adaptation)


def over_budget(agent: Agent, ms: float = 100.0) -> None:
    for _ in range(3):
        agent.health.record_inference(ms)


def wait_for_swap(agent: Agent, now: float) -> None:
    future = agent.adapter.rungs.pending
    future.result(timeout=5)
    agent.control(now)  # between ticks: swaps without waiting for the next reading


def test_the_start_rung_sets_every_stream_s_detect_interval(tmp_path):
    agent = make_agent(tmp_path, Loader(), start=1)
    assert [s.scheduler.detect_interval for s in agent.loop.streams] == [3, 3]


def test_a_detect_interval_step_applies_to_every_stream_at_once_without_loading(tmp_path):
    loader = Loader()
    agent = make_agent(tmp_path, loader)
    first = agent.detector
    over_budget(agent)
    event = agent.control(1.0)
    assert event is not None and event.direction == "down" and event.changes == ("detect_interval",)
    assert [s.scheduler.detect_interval for s in agent.loop.streams] == [3, 3]
    assert agent.detector is first and agent.adapter.rungs.pending is None, "same model and size: nothing to load"
    assert agent.adapter.controller.state.rung == 1
    assert agent.plan.detect_interval == 3, "the plan the heartbeats carry says so"


def test_readings_come_once_a_second(tmp_path):
    agent = make_agent(tmp_path, Loader())
    over_budget(agent)
    assert agent.control(0.5) is None, "less than every_s since the loop started"
    assert agent.control(1.0) is not None
    over_budget(agent)
    assert agent.control(1.5) is None


def test_an_input_size_step_loads_off_the_loop_thread_and_swaps_between_ticks(tmp_path):
    loader = Loader()
    agent = make_agent(tmp_path, loader, start=1)
    first = agent.detector
    over_budget(agent)
    event = agent.control(1.0)  # returns while the load is still blocked: the loop never waits
    assert event is not None and event.changes == ("input_size",)
    assert agent.detector is first and agent.adapter.rungs.pending is not None
    agent.control(1.1)
    assert agent.detector is first, "not swapped before the load finished"

    loader.release.set()
    wait_for_swap(agent, 1.2)
    assert agent.detector is not first and agent.detector.input_size == (256, 256)
    assert agent.detector.loaded_on != threading.current_thread().name
    assert first.closed and not agent.detector.closed
    assert agent.health.sample().inference_ms_p95 == 0.0, "the old detector's latencies are forgotten"


def test_a_model_step_swaps_in_the_smaller_model(tmp_path):
    loader = Loader()
    loader.release.set()
    agent = make_agent(tmp_path, loader, start=2)
    over_budget(agent)
    event = agent.control(1.0)
    assert event.changes == ("model",)
    wait_for_swap(agent, 1.1)
    assert agent.detector.rung.model_path == "small.onnx"


def test_a_load_that_finishes_after_the_controller_moved_on_is_dropped(tmp_path):
    loader = Loader()
    agent = make_agent(tmp_path, loader, start=1)
    first = agent.detector
    over_budget(agent)
    agent.control(1.0)  # to 256 (loading)
    over_budget(agent)
    agent.control(2.0)  # to the small model while 256 is still loading
    loader.release.set()
    wait_for_swap(agent, 2.1)  # the 256 net arrives: not wanted any more, the small model loads next
    assert agent.detector is first
    assert loader.loaded[0].closed
    wait_for_swap(agent, 2.2)
    assert agent.detector.rung.model_path == "small.onnx" and first.closed


def test_a_rung_that_fails_to_load_keeps_the_running_detector(tmp_path, caplog):
    loader = Loader(fail=True)
    loader.release.set()
    agent = make_agent(tmp_path, loader, start=1)
    first = agent.detector
    over_budget(agent)
    agent.control(1.0)
    agent.adapter.rungs.pending.exception(timeout=5)
    agent.control(1.1)
    assert agent.detector is first and not first.closed
    assert agent.adapter.rungs.pending is None, "a failed rung is not retried on every tick"
    assert "failed, keeping the running detector" in caplog.text


@pytest.mark.parametrize("threshold, last_frame", [(0.25, []), (0.0, [0.15])])
def test_a_low_score_box_keeps_its_track_but_is_published_only_above_the_threshold(tmp_path, threshold,
                                                                                    last_frame):
    """The person is detected at 0.9 until an occlusion drops its score to 0.15: ByteTrack's second
    association keeps the track on it; the outbox gets the row only when the threshold allows."""
    scores = iter([0.9, 0.9, 0.9, 0.9, 0.15])

    class Occluded(FakeDetector):
        def detect_batch(self, frames):
            box = np.array([[10, 10, 30, 50]], np.float32)
            return [Detections(box, np.array([next(scores)], np.float32), np.zeros(1, np.int32))
                    for _ in frames]

    options = RunOptions(controller="127.0.0.1:1", sources=["synthetic://64x64?frames=5"],
                         state_dir=tmp_path / "agent", publish_threshold=threshold)
    agent = Agent(options, Occluded(LADDER[0]), open_source, HardwareProfile(), DevicePlan())
    stream = agent.loop.streams[0]
    stream.source.start()
    try:
        records = [agent.loop._process([(stream, stream.source.read(timeout=5))])[0] for _ in range(5)]
    finally:
        stream.source.stop()
    assert [o.score for o in records[3].objects] == pytest.approx([0.9])
    assert [o.score for o in records[4].objects] == pytest.approx(last_frame)
    assert stream.tracker.associate(Detections(np.array([[10, 10, 30, 50]], np.float32),
                                               np.array([0.9], np.float32), np.zeros(1, np.int32)))[0] == \
        records[3].objects[0].track_id, "the track lived through the low-score frame"


# ---- operator overrides (edgefleet.v1.SetPlan over the Session) ----

def set_plan(**fields):
    """A SetPlan command as the link hands it over (converted from the wire)."""
    pinned = fields.pop("pinned", None)
    override = types_pb2.SetPlan(**fields)
    if pinned is not None:
        override.pinned.CopyFrom(types_pb2.RuntimePlan(**pinned))
    return command_from_pb(agent_pb2.Command(command_id="c1", set_plan=override))


def test_bounds_leave_the_controller_only_the_rungs_inside_them(tmp_path):
    loader = Loader()
    loader.release.set()
    agent = make_agent(tmp_path, loader)
    agent.commands.put(set_plan(max_input_size=256, min_detect_interval=2))
    agent.apply_commands(1.0)
    ladder = agent.adapter.controller.ladder
    assert [(r.model, r.input_size, r.detect_interval) for r in ladder] == [
        ("net", (256, 256), 3), ("small", (256, 256), 3)]
    assert [s.scheduler.detect_interval for s in agent.loop.streams] == [3, 3]
    wait_for_swap(agent, 1.1)
    assert agent.detector.input_size == (256, 256)


def test_a_pin_is_a_ladder_of_one_and_clear_returns_to_the_device_s_own(tmp_path):
    loader = Loader()
    loader.release.set()
    agent = make_agent(tmp_path, loader)
    agent.commands.put(set_plan(pinned={"model": "small", "input_width": 256, "input_height": 256,
                                        "detect_interval": 2}))
    agent.apply_commands(1.0)
    assert [(r.model_path, r.input_size, r.detect_interval) for r in agent.adapter.controller.ladder] == [
        ("small.onnx", (256, 256), 2)]
    over_budget(agent)
    assert agent.control(2.0) is None, "pinned: the controller has nowhere to go"
    agent.commands.put(set_plan(clear=True))
    agent.apply_commands(3.0)
    assert agent.adapter.controller.ladder == LADDER


def test_an_override_that_cannot_apply_is_refused_and_changes_nothing(tmp_path, caplog):
    agent = make_agent(tmp_path, Loader())
    agent.commands.put(set_plan(pinned={"model": "yolo-huge"}))
    agent.commands.put(set_plan(max_input_size=128))
    agent.apply_commands(1.0)
    assert agent.adapter.controller.ladder == LADDER
    assert "pinned model 'yolo-huge' is not on this device" in caplog.text
    assert "no rung fits max_input_size=128" in caplog.text


def test_without_the_controller_only_the_detect_interval_follows(tmp_path):
    options = RunOptions(controller="127.0.0.1:1", sources=["synthetic://64x64?frames=5"],
                         state_dir=tmp_path / "agent", detect_interval=2)
    agent = Agent(options, FakeDetector(LADDER[0]), open_source, HardwareProfile(), DevicePlan())
    agent.commands.put(set_plan(min_detect_interval=4))
    agent.apply_commands(1.0)
    assert agent.loop.streams[0].scheduler.detect_interval == 4
    agent.commands.put(set_plan(clear=True))
    agent.apply_commands(2.0)
    assert agent.loop.streams[0].scheduler.detect_interval == 2
