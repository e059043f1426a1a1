"""A fixed fleet for snapshot tests only: the same devices, events and frames on every run.

Behaviour tests use a real controller and simulated agents (`tests.tui.agents`); snapshots
need pixels that do not move, so they render from this instead: fixed ids, fixed times, a
clock that stands still. It answers the calls `tui.client.FleetClient` answers.
"""
from __future__ import annotations

import threading
from dataclasses import replace

import cv2
import numpy as np

from edgefleet.tui.errors import Unimplemented
from edgefleet.tui.views import (
    ArtifactView,
    CountsView,
    CountView,
    DeviceView,
    EventEntry,
    FrameView,
    Health,
    ObjectView,
    PictureView,
    Plan,
    PlanOverride,
    RolloutDeviceView,
    RolloutSpecView,
    RolloutView,
    TrackedObjectView,
    WaveView,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

TINY = Plan(model="yolov3-tiny-coco", artifact_sha256="", backend="onnxruntime", precision="fp32",
            input_width=416, input_height=416, detect_interval=2, latency_budget_ms=100, reason="cpu default")
SHA_V8 = "9f2c4e1ab07d5c33" + "a1" * 24
SHA_V8_ONNX = "51be07aa90c1d2e3" + "b2" * 24
SHA_V5 = "0c1d2e3f4a5b6c7d" + "c3" * 24
ORIN = Plan(model="yolov8n-coco", artifact_sha256=SHA_V8, backend="tensorrt", precision="fp16",
            input_width=640, input_height=640, detect_interval=1, latency_budget_ms=33, reason="rollout ro-0003")
ORIN_BEFORE = Plan(model="yolov5n-coco", artifact_sha256=SHA_V5, backend="tensorrt", precision="fp16",
                   input_width=640, input_height=640, detect_interval=1, latency_budget_ms=33,
                   reason="rollout ro-0001")
"""What dock-cam1 ran before ro-0003 reached it: ListDevices says this, the stream then the new engine."""


def _device(device_id: str, platform: str, status: str, age_s: float | None, plan: Plan | None,
            fps: float | None = None, p95: float = 0.0, temp: float | None = None, outbox: int = 0,
            detections: int = 0, **extra) -> DeviceView:
    last_seen = None if age_s is None else NOW - age_s
    health = None if fps is None else Health(
        time=last_seen, fps=fps, latency_ms_p95=p95, temperature_c=temp, outbox_depth=outbox,
        detections_total=detections, frames_total=detections * 3)
    return DeviceView(device_id=device_id, hostname=device_id.rsplit("-", 1)[0], status=status, last_seen=last_seen,
                      enrolled=NOW - 86400, agent_version="0.1.0", platform=platform, plan=plan, health=health,
                      streams=("cam0",), connected=status == "online", **extra)


DEVICES = [
    _device("dock-cam1-3fa2c1", "jetson-orin-nano", "online", 1, ORIN, 29.7, 31.2, 54, 0, 8120),
    _device("dock-cam2-77b0e4", "jetson-orin-nano", "online", 2, ORIN, 30.1, 28.9, 57, 3, 9035),
    _device("gate-1-a0c9d2", "rpi5", "online", 1, TINY, 7.8, 212.4, 63, 12, 1204,
            override=PlanOverride(pinned=TINY)),
    _device("gate-2-5e61b8", "rpi5", "stale", 9, TINY, 6.9, 240.0, 71, 140, 1100),
    _device("lab-x86-c4d3e2", "x86_64-cpu", "online", 0, TINY, 18.2, 96.5, None, 0, 4410),
    _device("yard-pi4-0b1c2d", "rpi4", "offline", 3 * 3600, TINY, 2.1, 610.0, 78, 2048, 300),
    _device("new-box-9d8e7f", "", "offline", None, None),
]

# dock-cam1's last few heartbeats, oldest first: what its sparklines draw.
HISTORY = [
    replace(DEVICES[0], health=replace(DEVICES[0].health, time=NOW - 10 + i, fps=fps, latency_ms_p95=p95,
                                       temperature_c=temp, detections_total=8000 + 12 * i))
    for i, (fps, p95, temp) in enumerate([(27.0, 35.0, 50), (28.5, 33.0, 51), (30.2, 30.1, 52), (29.9, 29.5, 53),
                                           (25.1, 41.0, 55), (28.8, 32.2, 54), (29.4, 31.0, 54), (30.0, 30.5, 55),
                                           (29.6, 30.9, 54), (29.7, 31.2, 54)])
]

EVENTS = [
    EventEntry(NOW - 3600, "fleet", "yard-pi4 (yard-pi4-0b1c2d) is OFFLINE", "yard-pi4-0b1c2d"),
    EventEntry(NOW - 600, "fleet", "new-box enrolled as new-box-9d8e7f"),
    EventEntry(NOW - 300, "fleet", "dock-cam1 (dock-cam1-3fa2c1) connected", "dock-cam1-3fa2c1"),
    EventEntry(NOW - 290, "fleet", "dock-cam1 (dock-cam1-3fa2c1) changed its plan", "dock-cam1-3fa2c1"),
    EventEntry(NOW - 120, "fleet", "plan override for gate-1 (gate-1-a0c9d2) set (1 open session(s) notified)",
               "gate-1-a0c9d2"),
    EventEntry(NOW - 9, "fleet", "gate-2 (gate-2-5e61b8) is STALE", "gate-2-5e61b8"),
]

FRAMES = [
    FrameView("dock-cam1-3fa2c1", "cam0", 4100 + i, 8200 + 2 * i, NOW - 5 + i, objects)
    for i, objects in enumerate([
        (ObjectView(17, "person", 0.91), ObjectView(18, "forklift", 0.77)),
        (ObjectView(17, "person", 0.9), ObjectView(18, "forklift", 0.8), ObjectView(21, "person", 0.55)),
        (ObjectView(17, "person", 0.88, predicted=True), ObjectView(21, "person", 0.61)),
        (ObjectView(17, "person", 0.93), ObjectView(22, "truck", 0.7)),
    ])
]



def scene() -> np.ndarray:
    """dock-cam1's latest frame, as its agent draws it: a floor, a zone, a counting line, a captioned box."""
    frame = np.full((240, 320, 3), (60, 60, 60), np.uint8)  # BGR
    frame[150:] = (90, 110, 90)
    cv2.fillPoly(frame, [np.array([[20, 160], [140, 160], [140, 230], [20, 230]], np.int32)], (140, 90, 40))
    cv2.line(frame, (0, 150), (319, 150), (0, 220, 255), 3)
    cv2.rectangle(frame, (180, 70), (230, 200), (0, 200, 0), 2)
    cv2.rectangle(frame, (180, 56), (262, 70), (0, 200, 0), -1)
    return frame


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


SCENE = scene()
LIVE = PictureView("dock-cam1-3fa2c1", "cam0", "live", jpeg(SCENE), NOW - 1)
CROP = PictureView("dock-cam1-3fa2c1", "cam0", "crop", jpeg(SCENE[70:200, 180:230]), NOW - 40, "1699999950000-a1b2c3",
                   "person", 0.91)
OBJECTS = [
    TrackedObjectView("1699999990000-d4e5f6", "dock-cam1-3fa2c1", "cam0", 22, "truck", NOW - 10, NOW - 1, 0.7,
                      ("dock",), (), False, False),
    TrackedObjectView("1699999950000-a1b2c3", "dock-cam1-3fa2c1", "cam0", 17, "person", NOW - 50, NOW - 30, 0.93,
                      ("dock",), (("door", "in"),), True, True),
]
DEVICE_COUNTS = CountsView((CountView("line", "door", "person", "in", 31, "cam0"),
                            CountView("line", "door", "person", "out", 28, "cam0"),
                            CountView("zone", "dock", "person", "enter", 40, "cam0"),
                            CountView("zone", "dock", "truck", "enter", 6, "cam0")), 105)
FLEET_COUNTS = CountsView((CountView("line", "door", "person", "in", 4, group=""),
                           CountView("line", "door", "person", "in", 31, group="dock"),
                           CountView("line", "door", "person", "out", 28, group="dock"),
                           CountView("zone", "dock", "person", "enter", 40, group="dock"),
                           CountView("line", "gate", "car", "in", 212, group="gate"),
                           CountView("line", "gate", "car", "out", 198, group="gate")), 513)


def _members(wave: int, states: list[tuple[str, str, str]]) -> tuple[RolloutDeviceView, ...]:
    return tuple(RolloutDeviceView(device_id, wave, state, reason) for device_id, state, reason in states)


ROLLOUTS = [
    RolloutView("ro-0003", SHA_V8, "running",
                (WaveView(0, 1, 1, 0, "succeeded"), WaveView(1, 1, 0, 0, "running")),
                _members(0, [("dock-cam1-3fa2c1", "active", "")]) + _members(1, [
                    ("dock-cam2-77b0e4", "shadow_testing", "")]),
                NOW - 900, spec=RolloutSpecView((("site", "dock"),), 1, (100,), 0.9, 0)),
    RolloutView("ro-0002", SHA_V8_ONNX, "paused",
                (WaveView(0, 1, 1, 0, "succeeded"), WaveView(1, 4, 2, 1, "paused"), WaveView(2, 3, 0, 0, "pending")),
                _members(0, [("lab-x86-c4d3e2", "active", "")])
                + _members(1, [("gate-1-a0c9d2", "active", ""), ("gate-2-5e61b8", "failed",
                                                                 "shadow test failed: fps ratio 0.41 < 0.90"),
                               ("gate-3-1d2e3f", "active", ""), ("gate-4-4a5b6c", "downloading", "")])
                + _members(2, [("gate-5-7d8e9f", "pending", ""), ("gate-6-0a1b2c", "pending", ""),
                               ("yard-pi4-0b1c2d", "pending", "")])
                + (RolloutDeviceView("new-box-9d8e7f", -1, "skipped", "no onnxruntime on the device"),),
                NOW - 7200, "paused by an operator: watch fps on gate-2",
                RolloutSpecView((), 1, (50, 100), 0.9, 2)),
    RolloutView("ro-0001", SHA_V5, "succeeded", (WaveView(0, 2, 2, 0, "succeeded"),),
                _members(0, [("dock-cam1-3fa2c1", "active", ""), ("dock-cam2-77b0e4", "active", "")]), NOW - 86400,
                spec=RolloutSpecView((("site", "dock"),), 2, (100,), 0.9, 0)),
]

ARTIFACTS = [
    ArtifactView(SHA_V8, "yolov8n-coco-orin", "tensorrt-engine", 6_412_000, "fp16", 640, 640, NOW - 1000),
    ArtifactView(SHA_V8_ONNX, "yolov8n-coco", "onnx", 12_845_000, "fp32", 640, 640, NOW - 8000),
    ArtifactView(SHA_V5, "yolov5n-coco-orin", "tensorrt-engine", 5_204_000, "fp16", 640, 640, NOW - 90000),
]


class FixedStream:
    """Yields its items, then waits until cancelled, like a quiet server stream."""

    def __init__(self, items):
        self._items = list(items)
        self._cancelled = threading.Event()

    def __iter__(self):
        yield from self._items
        self._cancelled.wait()

    def cancel(self) -> None:
        self._cancelled.set()


class FixedClient:
    address = "ctl.example:50051"

    def __init__(self, rollouts: list[RolloutView] | None = None):
        """`rollouts` None: the rollout calls answer UNIMPLEMENTED, as today's controller does."""
        self.rollouts = rollouts

    def close(self) -> None:
        pass

    def list_devices(self) -> list[DeviceView]:
        return [replace(DEVICES[0], plan=ORIN_BEFORE, last_seen=NOW - 3600), *DEVICES[1:]]

    def watch_fleet(self) -> FixedStream:
        return FixedStream([*HISTORY, *EVENTS])

    def watch_detections(self, device_id: str) -> FixedStream:
        return FixedStream(f for f in FRAMES if f.device_id == device_id)

    def list_rollouts(self) -> list[RolloutView]:
        if self.rollouts is None:
            raise Unimplemented("ListRollouts", "UNIMPLEMENTED", "Method not implemented!")
        return list(self.rollouts)

    def list_artifacts(self) -> list[ArtifactView]:
        if self.rollouts is None:
            raise Unimplemented("ListArtifacts", "UNIMPLEMENTED", "Method not implemented!")
        return list(ARTIFACTS)

    def get_frame(self, device_id: str, stream_id: str = "", max_width: int = 0, wait_s: float = 3.0) -> PictureView:
        if device_id != LIVE.device_id:
            from edgefleet.tui.errors import ControllerError

            raise ControllerError("GetFrame", "UNAVAILABLE", f"device {device_id} is not connected")
        return LIVE

    def get_snapshot(self, object_id: str, device_id: str = "", kind: str = "crop") -> PictureView:
        return CROP

    def list_objects(self, device_id: str = "", limit: int = 20) -> list[TrackedObjectView]:
        return [o for o in OBJECTS if o.device_id == device_id or not device_id][:limit]

    def count_objects(self, since: float, device_id: str = "", group_by: tuple[str, ...] = ()) -> CountsView:
        if device_id:
            return DEVICE_COUNTS if device_id == LIVE.device_id else CountsView((), 0)
        return FLEET_COUNTS

    def _unimplemented(self, *args, **kwargs):
        raise Unimplemented("SendCommand", "UNIMPLEMENTED", "Method not implemented!")

    pin_plan = clear_plan = restart = rollback = get_device = _unimplemented
    pause_rollout = resume_rollout = abort_rollout = create_rollout = get_rollout = _unimplemented
