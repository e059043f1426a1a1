"""Simulated agents for scripts/bench/fleet.py: real gRPC device clients, many per process.

Each agent has its own channel (TCP connection) to one controller replica (agent i to replica
i mod N), enrolls, opens a Session (hello, then heartbeats at the controller's interval) and a
PublishDetections stream, and sends a batch of frames at a fixed rate, each with moving, tracked
objects; it records publish->ack latency per batch.
"""
from __future__ import annotations

import asyncio
import collections
import random
import signal
import time

LABELS = [(0, "person"), (2, "car"), (1, "bicycle"), (3, "motorcycle"), (5, "bus"), (7, "truck"), (16, "dog")]
FRAME_W, FRAME_H = 1280.0, 720.0


class SimAgent:
    """One device: Enroll, a Session with heartbeats, a PublishDetections stream at a fixed rate."""

    def __init__(self, index: int, cfg: dict):
        self.index = index
        self.cfg = cfg
        self.rng = random.Random(index)
        self.device_id = ""
        self.token = ""
        self.channel = None
        self.stub = None
        self.heartbeat_s = 5.0
        self.session_task = None
        self.session_ok = asyncio.Event()
        self.stopping = asyncio.Event()
        self.sent = 0  # highest sequence written
        self.acked = 0
        self.ack_duplicates = 0
        self.batches = 0
        self.heartbeats = 0
        self.in_flight: collections.deque = collections.deque()  # (last sequence, perf time written, wall time)
        self.latencies: list[tuple[float, float]] = []  # (wall time written, seconds to ack)
        self.send_lag: list[float] = []  # how late each batch went out against its schedule
        self.errors: list[str] = []
        self.connected_at: float | None = None
        self.failed_at: float | None = None
        # objects: a track id, a class, a box moving across the frame
        self.tracks = [self._new_track(k + 1) for k in range(cfg["objects"])]
        self.next_track = cfg["objects"] + 1

    def _new_track(self, track_id: int) -> list:
        class_id, label = self.rng.choice(LABELS)
        w, h = self.rng.uniform(40, 200), self.rng.uniform(60, 300)
        x, y = self.rng.uniform(0, FRAME_W - w), self.rng.uniform(0, FRAME_H - h)
        vx, vy = self.rng.uniform(-8, 8), self.rng.uniform(-3, 3)
        return [track_id, class_id, label, x, y, w, h, vx, vy, self.rng.uniform(0.35, 0.98)]

    def _frame(self, types_pb2, sequence: int, capture_time: float):
        detections = []
        for k, t in enumerate(self.tracks):
            t[3] += t[7]
            t[4] += t[8]
            if not (0 <= t[3] <= FRAME_W - t[5] and 0 <= t[4] <= FRAME_H - t[6]):  # left the frame: a new object
                t = self.tracks[k] = self._new_track(self.next_track)
                self.next_track += 1
            track_id, class_id, label, x, y, w, h, _, _, score = t
            detections.append(types_pb2.Detection(
                track_id=track_id, class_id=class_id, label=label,
                score=min(0.99, max(0.25, score + self.rng.uniform(-0.03, 0.03))),
                box=types_pb2.Box(x1=x, y1=y, x2=x + w, y2=y + h),
            ))
        frame = types_pb2.FrameDetections(stream_id="cam0", sequence=sequence, frame_index=sequence - 1,
                                          detections=detections)
        frame.capture_time.FromNanoseconds(int(capture_time * 1e9))
        return frame

    def address(self, addresses: list[str]) -> str:
        """The controller replica this agent talks to: agent i to replica i mod N, the fleet spread evenly."""
        return addresses[self.index % len(addresses)]

    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),)

    async def connect(self, address: str, enroll_key: str) -> None:
        import grpc

        from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

        # a connection of its own, as a real device has (grpc would share one per process otherwise)
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = agent_pb2_grpc.AgentGatewayStub(self.channel)
        reply = await self.stub.Enroll(agent_pb2.EnrollRequest(
            enroll_key=enroll_key, hardware_id=f"bench-{self.cfg['run_id']}-{self.index:05d}",
            hostname=f"bench-{self.index:05d}", agent_version="bench-0.1",
            profile=types_pb2.HardwareProfile(platform="x86_64-cpu", machine="x86_64", cpu_cores=4),
            labels={"bench": self.cfg["run_id"]},
        ), timeout=60)
        self.device_id, self.token = reply.device_id, reply.device_token
        self.heartbeat_s = float(reply.heartbeat_interval_s or 5)
        self.session_task = asyncio.create_task(self._session())
        await asyncio.wait_for(self.session_ok.wait(), timeout=60)
        self.connected_at = time.time()

    async def _session_messages(self):
        from edgefleet.v1 import agent_pb2, types_pb2

        yield agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            agent_version="bench-0.1", streams=["cam0"],
            profile=types_pb2.HardwareProfile(platform="x86_64-cpu", machine="x86_64", cpu_cores=4),
            plan=types_pb2.RuntimePlan(model="yolov3-tiny-coco", backend="onnxruntime", precision="fp32",
                                       input_width=416, input_height=416, batch=1, detect_interval=1),
        ))
        await asyncio.sleep(self.rng.uniform(0, self.heartbeat_s))  # spread the fleet's heartbeats
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            health = types_pb2.HealthSample(
                fps=self.cfg["fps"], detect_fps=self.cfg["fps"], inference_ms_p50=self.rng.uniform(20, 40),
                inference_ms_p95=self.rng.uniform(40, 60), latency_ms_p95=self.rng.uniform(50, 90),
                cpu_percent=self.rng.uniform(20, 60), temperature_c=self.rng.uniform(40, 60),
                frames_total=self.sent, detections_total=self.sent * self.cfg["objects"],
                streams=[types_pb2.StreamHealth(stream_id="cam0", source="rtsp://cam0", state="running",
                                                fps=self.cfg["fps"], frames=self.sent)],
            )
            health.time.FromNanoseconds(time.time_ns())
            yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=seq, health=health))
            self.heartbeats += 1
            try:
                await asyncio.wait_for(self.stopping.wait(), self.heartbeat_s)
            except asyncio.TimeoutError:
                pass

    async def _session(self) -> None:
        import grpc

        try:
            async for message in self.stub.Session(self._session_messages(), metadata=self.metadata()):
                if message.WhichOneof("body") == "accepted":
                    self.session_ok.set()
        except grpc.aio.AioRpcError as err:
            if not self.stopping.is_set():
                self._fail(f"Session: {err.code().name}: {err.details()}")
        except asyncio.CancelledError:
            pass

    def _fail(self, message: str) -> None:
        if self.failed_at is None:
            self.failed_at = time.time()
        self.errors.append(message)

    async def publish(self, start: float, end: float) -> None:
        """Batches on schedule from `start` (wall time, plus a random phase) until `end`; then the last acks."""
        import grpc

        from edgefleet.v1 import agent_pb2, types_pb2

        batch, fps = self.cfg["batch"], self.cfg["fps"]
        period = batch / fps
        call = self.stub.PublishDetections(metadata=self.metadata())

        async def receive_acks() -> None:
            async for ack in call:
                now_perf = time.perf_counter()
                self.acked = max(self.acked, ack.acked_sequence)
                self.ack_duplicates += ack.duplicates
                while self.in_flight and self.in_flight[0][0] <= ack.acked_sequence:
                    _, written_perf, written = self.in_flight.popleft()
                    self.latencies.append((written, now_perf - written_perf))
                if self.stopping.is_set() and self.acked >= self.sent:
                    return

        receiver = asyncio.create_task(receive_acks())
        due = start + self.rng.uniform(0, period)
        try:
            while due < end:
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if receiver.done():
                    receiver.result()
                    raise RuntimeError("the controller closed the detection stream")
                now = time.time()
                self.send_lag.append(now - due)
                first = self.sent + 1
                frames = [self._frame(types_pb2, first + k, now - (batch - 1 - k) / fps) for k in range(batch)]
                self.in_flight.append((first + batch - 1, time.perf_counter(), now))
                await call.write(agent_pb2.DetectionBatch(frames=frames))
                self.sent = first + batch - 1
                self.batches += 1
                due += period
            self.stopping.set()
            if self.acked < self.sent:
                await asyncio.wait_for(asyncio.shield(receiver), timeout=self.cfg["drain_timeout"])
            await call.done_writing()
        except (grpc.aio.AioRpcError, RuntimeError, asyncio.TimeoutError) as err:
            detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else repr(err)
            self._fail(f"PublishDetections: {detail}")
        finally:
            self.stopping.set()
            receiver.cancel()

    async def close(self) -> None:
        self.stopping.set()
        if self.session_task is not None:
            try:
                await asyncio.wait_for(self.session_task, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.session_task.cancel()
        if self.channel is not None:
            await self.channel.close()

    def result(self) -> dict:
        return {
            "index": self.index, "device_id": self.device_id, "sent": self.sent, "acked": self.acked,
            "batches": self.batches, "heartbeats": self.heartbeats, "ack_duplicates": self.ack_duplicates,
            "connected_at": self.connected_at, "failed_at": self.failed_at, "errors": self.errors[:3],
            "latencies": self.latencies, "send_lag": self.send_lag,
        }


async def _worker(indices: list[int], cfg: dict, ready, go, start_at) -> list[dict]:
    agents = [SimAgent(i, cfg) for i in indices]
    gate = asyncio.Semaphore(cfg["connect_concurrency"])

    async def connect(agent: SimAgent) -> None:
        async with gate:
            try:
                await agent.connect(agent.address(cfg["addresses"]), cfg["enroll_key"])
            except Exception as err:  # noqa: BLE001 - counted as an agent that never connected
                agent._fail(f"connect: {err!r}")

    await asyncio.gather(*(connect(a) for a in agents))
    ready.put(sum(a.connected_at is not None for a in agents))
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, cfg["ready_timeout"]):
        raise SystemExit("worker: no start signal")
    start = start_at.value
    end = start + cfg["warmup"] + cfg["seconds"]
    live = [a for a in agents if a.connected_at is not None]
    await asyncio.gather(*(a.publish(start, end) for a in live))
    await asyncio.gather(*(a.close() for a in agents))
    return [a.result() for a in agents]


def worker_main(worker: int, indices: list[int], cfg: dict, ready, go, start_at, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a run ends
    try:
        out = asyncio.run(_worker(indices, cfg, ready, go, start_at))
        results.put((worker, out, None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails the run
        results.put((worker, [], repr(err)))
        ready.put(0)
