"""Simulated agents for TUI tests and the TUI bench: real gRPC device clients, no agent process.

A `SimAgent` enrolls like `edge-agent` does, holds a Session open (hello, then the heartbeats
and deployment reports the test sends), publishes detection batches, and queues the commands
that come down.
"""
from __future__ import annotations

import queue
import threading

import cv2
import grpc
import numpy as np

from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

PLAN = types_pb2.RuntimePlan(
    model="yolov3-tiny-coco", backend="onnxruntime", precision="fp32", input_width=416, input_height=416,
    detect_interval=2, latency_budget_ms=100, reason="cpu default",
)


def picture(stream: str) -> bytes:
    """A stream's frame as the agent would draw it: a grey scene with a yellow counting line across."""
    frame = np.full((120, 160, 3), 70, np.uint8)
    cv2.line(frame, (0, 80), (159, 80), (0, 220, 255), 3)
    cv2.putText(frame, stream, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return cv2.imencode(".jpg", frame)[1].tobytes()


def noisy_picture(stream: str) -> bytes:
    """A frame JPEG compresses badly: tens of kilobytes, as a real 640-pixel frame is."""
    frame = np.random.default_rng(len(stream)).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def auth(token: str):
    return (("authorization", f"Bearer {token}"),)


class SimAgent:
    def __init__(self, address: str, hostname: str, platform: str = "rpi5", plan: types_pb2.RuntimePlan = PLAN,
                 key: str = "efk_test", hardware_id: str | None = None, streams: tuple[str, ...] = ("cam0",),
                 providers: tuple[str, ...] = (), labels: dict[str, str] | None = None):
        """`providers`: onnxruntime execution providers; a device needs one to take an "onnx" rollout."""
        self.channel = grpc.insecure_channel(address)
        self.stub = agent_pb2_grpc.AgentGatewayStub(self.channel)
        self.profile = types_pb2.HardwareProfile(platform=platform, machine="aarch64",
                                                 onnxruntime_providers=list(providers))
        reply = self.stub.Enroll(agent_pb2.EnrollRequest(
            enroll_key=key, hardware_id=hardware_id or f"hw-{hostname}", hostname=hostname,
            agent_version="sim", profile=self.profile, labels=labels or {}), timeout=10)
        self.device_id = reply.device_id
        self.token = reply.device_token
        self.labels = labels or {}  # a real agent reports its labels at enroll and in every Hello
        self.plan = plan
        self.streams = streams
        self.commands: queue.Queue = queue.Queue()
        self.captures = 0
        self.answer_captures = True  # False: a device too busy to answer CaptureFrame
        self.scene = picture  # stream id -> the JPEG CaptureFrame answers
        self.sequence = 0
        self.beats = 0
        self._up: queue.Queue | None = None
        self._reader: threading.Thread | None = None

    def connect(self) -> SimAgent:
        """Open the Session: hello with profile, plan and streams; commands go to `self.commands`."""
        self._up = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            agent_version="sim", profile=self.profile, plan=self.plan, streams=list(self.streams),
            labels=self.labels)))
        call = self.stub.Session(iter(self._up.get, None), metadata=auth(self.token))

        def read() -> None:
            try:
                for message in call:
                    if message.WhichOneof("body") == "command":
                        if message.command.WhichOneof("action") == "capture_frame":
                            self.captures += 1  # the device screen asks every 2 s: not what tests wait for
                        else:
                            self.commands.put(message.command)
                        self._answer(message.command)
            except grpc.RpcError:
                pass  # the controller went away or the test closed the session

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return self

    def _answer(self, command: agent_pb2.Command) -> None:
        """Every command done at once, as a real agent answers (the controller waits for the answer);
        CaptureFrame with a picture of the stream (`picture`), as the agent's latest annotated frame."""
        if self._up is None:
            return
        result = agent_pb2.CommandResult(command_id=command.command_id, ok=True, detail="simulated")
        if command.WhichOneof("action") == "capture_frame":
            if not self.answer_captures:
                return
            stream = command.capture_frame.stream_id or self.streams[0]
            if stream not in self.streams:
                error = f"no stream {stream!r}: this device has {', '.join(self.streams)}"
                result = agent_pb2.CommandResult(command_id=command.command_id, ok=False, error=error)
            else:
                result.snapshot.CopyFrom(types_pb2.Snapshot(stream_id=stream, kind="live", jpeg=self.scene(stream)))
                result.snapshot.time.GetCurrentTime()
        self._up.put(agent_pb2.AgentMessage(result=result))

    def heartbeat(self, fps: float = 10.0, latency_ms: float = 50.0, temperature_c: float = 0.0,
                  detections_total: int = 0, outbox_depth: int = 0) -> None:
        self.beats += 1
        self._up.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=self.beats, health=types_pb2.HealthSample(
            fps=fps, latency_ms_p95=latency_ms, temperature_c=temperature_c, detections_total=detections_total,
            frames_total=self.beats * 10, outbox_depth=outbox_depth))))

    def report(self, rollout_id: str, sha256: str, state: int, reason: str = "") -> None:
        """A DeploymentStatus up the Session, as the agent sends while it deploys an engine."""
        self._up.put(agent_pb2.AgentMessage(deployment=types_pb2.DeploymentStatus(
            rollout_id=rollout_id, artifact_sha256=sha256, state=state, reason=reason)))

    def switch(self, plan: types_pb2.RuntimePlan) -> None:
        """The agent runs another plan now (a new engine): a heartbeat carrying it."""
        self.plan = plan
        self.beats += 1
        self._up.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(
            seq=self.beats, health=types_pb2.HealthSample(fps=10.0, frames_total=self.beats * 10), plan=plan)))

    def publish(self, *objects: tuple[int, str, float], stream: str = "cam0") -> int:
        """One frame with these (track id, label, score) objects; returns its sequence."""
        self.sequence += 1
        frame = types_pb2.FrameDetections(
            stream_id=stream, sequence=self.sequence, frame_index=self.sequence * 2,
            detections=[types_pb2.Detection(track_id=t, label=label, score=score,
                                            box=types_pb2.Box(x1=1, y1=2, x2=30, y2=40))
                        for t, label, score in objects])
        list(self.stub.PublishDetections(iter([agent_pb2.DetectionBatch(frames=[frame])]),
                                         metadata=auth(self.token), timeout=10))
        return self.sequence

    def publish_records(self, records: list) -> int:
        """Objects, counts and snapshots (`common.records`), each given the next sequence, in one batch as
        the agent's outbox sends them; returns the last sequence."""
        from edgefleet.common.convert import batch_to_pb

        for record in records:
            self.sequence += 1
            record.sequence = self.sequence
        list(self.stub.PublishDetections(iter([batch_to_pb(records)]), metadata=auth(self.token), timeout=10))
        return self.sequence

    def disconnect(self) -> None:
        if self._up is not None:
            self._up.put(None)
        if self._reader is not None:
            self._reader.join(5)
        self._up = self._reader = None

    def close(self) -> None:
        self.disconnect()
        self.channel.close()
