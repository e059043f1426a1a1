#!/usr/bin/env python3
"""Fleet ingest at scale: simulated agents over real gRPC against a real controller process.

    python scripts/bench/fleet.py [--agents 1000] [--procs 8] [--seconds 30] [--warmup 5] [--fps 4]
                                  [--objects 5] [--batch 8] [--heartbeat-interval 5] [--workdir DIR]
                                  [--profile] [--out var/bench/fleet.json]

1. A controller in its own process (`python -m fleet.cli serve`, metrics on) with a fresh
   SQLite file and an enrollment key made by `python -m fleet.cli enroll-key create`.
2. `--procs` worker processes, each running its share of `--agents` on one asyncio loop.
   Every agent has its own channel (TCP connection), enrolls, opens a Session (hello, then
   heartbeats at the controller's interval) and a PublishDetections stream, and sends a batch
   of `--batch` frames every batch/fps seconds, `--objects` moving, tracked objects per frame.
   Publish->ack latency: from writing a batch to the ack that covers its last sequence.
3. After `--warmup` seconds, a steady window of `--seconds`: detections committed in it (from
   the store's `received` times), ack latency percentiles (agent side, and the controller's
   own histogram), the controller's CPU (percent of one core) and RSS (psutil).
4. The agents stop sending and wait for their last acks; the controller stops; the SQLite file
   is checked exactly: every acked (device, sequence) present once, nothing unsent present,
   every stored frame holding the objects sent.
`--profile` runs the controller under cProfile (event loop thread and store thread) and
writes the top functions to the workdir. Writes JSON (stdout, or --out); prints a summary.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import math
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(Path(__file__).resolve().parent)]

from report import write_report  # scripts/bench/report.py

LABELS = [(0, "person"), (2, "car"), (1, "bicycle"), (3, "motorcycle"), (5, "bus"), (7, "truck"), (16, "dog")]
FRAME_W, FRAME_H = 1280.0, 720.0


# ---- the simulated agents (worker processes) ----

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
                await agent.connect(cfg["address"], cfg["enroll_key"])
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


# ---- the controller process ----

def instrumented_controller(argv: list[str], out: Path, profile: bool) -> int:
    """`fleet.cli.main(argv)` with its garbage collector pauses logged to `out` (`serve` tunes the
    collector itself: fleet.cli.tune_gc_for_serving); with `profile`, under cProfile (the event
    loop thread and every other Python thread)."""
    import cProfile
    import gc
    import pstats
    import threading

    profiles = [cProfile.Profile()] if profile else []

    def in_thread(frame, event, arg):  # first call in a new thread: a profiler of its own replaces this hook
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    if profile:
        threading.setprofile(in_thread)
    pauses: dict[int, list[float]] = collections.defaultdict(list)
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    from fleet.cli import main

    if profiles:
        profiles[0].enable()
    try:
        return main(argv)
    finally:
        if profiles:
            profiles[0].disable()  # the other threads' profilers ended with their threads
        with out.open("w") as fh:
            for generation, times in sorted(pauses.items()):
                fh.write(f"gc generation {generation}: {len(times)} collections, {1000 * sum(times):.0f} ms in all, "
                         f"longest {1000 * max(times):.1f} ms\n")
            for n, prof in enumerate(profiles):
                try:
                    stats = pstats.Stats(prof, stream=fh)
                except TypeError:  # a thread that never ran Python code
                    continue
                fh.write(f"\n===== thread {n} ({'event loop' if n == 0 else 'worker'}) =====\n")
                stats.sort_stats("tottime").print_stats(35)
                stats.sort_stats("cumulative").print_stats(35)


def start_controller(workdir: Path, cfg: dict, profile: bool) -> tuple[subprocess.Popen, str, str]:
    db = workdir / "fleet.db"
    serve = ["--log-level", "info", "serve", "--db", str(db), "--listen", "127.0.0.1:0",
             "--heartbeat-interval", str(cfg["heartbeat_interval"]), "--metrics-listen", "127.0.0.1:0"]
    if profile:
        cmd = [sys.executable, __file__, "--_controller", str(workdir / "controller.prof.txt"), "--", *serve]
    else:
        cmd = [sys.executable, "-m", "fleet.cli", *serve]
    log = (workdir / "controller.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"})
    address = metrics = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (address and metrics):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"controller exited: see {workdir / 'controller.log'}")
        if m := re.search(r"listening on (\S+:\d+)", line):
            address = m.group(1)
        if m := re.search(r"metrics on (http://\S+/metrics)", line):
            metrics = m.group(1)
    if not address:
        raise SystemExit("controller did not say where it listens")
    return proc, address, metrics


def scrape_ack_histogram(url: str) -> dict[float, float]:
    """The controller's own ack latency histogram: cumulative count per upper bound (s)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    buckets = {}
    for m in re.finditer(r'^edgefleet_ack_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        buckets[math.inf if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return buckets


def histogram_quantile(q: float, before: dict, after: dict) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    for bound, count in zip(bounds, counts):
        if count >= target:
            return bound
    return math.inf


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


# ---- checks on the store ----

def check_store(db: Path, agents: list[dict], objects: int, window: tuple[float, float]) -> dict:
    """Exact: per device, the stored sequences against what the agent sent and what was acked."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored: dict[str, list[int]] = collections.defaultdict(list)
        rows = 0
        bad_objects = 0
        for device_id, sequence, n_objects in conn.execute(
                "select device_id, sequence, n_objects from detections order by device_id, sequence"):
            stored[device_id].append(sequence)
            rows += 1
            bad_objects += n_objects != objects
        counters = dict(conn.execute("select device_id, acked_sequence from devices").fetchall())
        stored_counts = dict(conn.execute("select device_id, detections_stored from devices").fetchall())
        lost = duplicated = unexpected = unacked = ack_mismatch = 0
        for agent in agents:
            sequences = stored.pop(agent["device_id"], [])
            present = set(sequences)
            duplicated += len(sequences) - len(present)
            lost += sum(1 for s in range(1, agent["acked"] + 1) if s not in present)
            unexpected += sum(1 for s in present if not 1 <= s <= agent["sent"])
            unacked += agent["sent"] - agent["acked"]
            if agent["device_id"] and (counters.get(agent["device_id"], 0) != agent["acked"]
                                       or stored_counts.get(agent["device_id"], 0) != len(sequences)):
                ack_mismatch += 1
        unexpected += sum(len(v) for v in stored.values())  # devices no agent of this run was
        start, end = window
        frames_w, dets_w = conn.execute(
            "select count(*), coalesce(sum(n_objects), 0) from detections where received >= ? and received < ?",
            [start, end]).fetchone()
        per_second = [d for _, d in conn.execute(
            "select cast(received as int) s, sum(n_objects) from detections where received >= ? and received < ?"
            " group by s order by s", [math.ceil(start), math.floor(end)])]
        first, last, total_dets = conn.execute(
            "select min(received), max(received), coalesce(sum(n_objects), 0) from detections").fetchone()
    finally:
        conn.close()
    return {
        "rows": rows, "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
        "sent_but_unacked": unacked, "device_counter_mismatches": ack_mismatch,
        "frames_with_wrong_object_count": bad_objects,
        "window": {"frames": frames_w, "detections": dets_w, "seconds": end - start,
                   "detections_per_s": round(dets_w / (end - start), 1),
                   "frames_per_s": round(frames_w / (end - start), 1),
                   "detections_per_s_min_1s": min(per_second) if per_second else None,
                   "detections_per_s_max_1s": max(per_second) if per_second else None},
        "whole_run": {"detections": total_dets,
                      "detections_per_s": round(total_dets / (last - first), 1) if first and last > first else None},
    }


# ---- the run ----

def run(args) -> dict:
    import psutil

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    key = subprocess.run([sys.executable, "-m", "fleet.cli", "--log-level", "warning", "enroll-key", "create",
                          "--db", str(db), "--name", "bench"], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"}).stdout.strip()
    cfg = {
        "run_id": f"{os.getpid()}-{int(time.time())}", "fps": args.fps, "objects": args.objects,
        "batch": args.batch, "seconds": args.seconds, "warmup": args.warmup,
        "heartbeat_interval": args.heartbeat_interval, "enroll_key": key,
        "connect_concurrency": 16, "ready_timeout": 120 + args.agents / 5, "drain_timeout": 30.0,
    }
    loadavg_before = os.getloadavg()
    controller, address, metrics_url = start_controller(workdir, cfg, args.profile)
    cfg["address"] = address
    ctl = psutil.Process(controller.pid)
    print(f"controller pid {controller.pid} on {address}; {args.agents} agents in {args.procs} processes",
          file=sys.stderr)
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    shares = [list(range(w, args.agents, args.procs)) for w in range(args.procs)]
    workers = [ctx.Process(target=worker_main, args=(w, shares[w], cfg, ready, go, start_at, results), daemon=True)
               for w in range(args.procs)]
    connect_started = time.time()
    for w in workers:
        w.start()
    try:
        connected = sum(ready.get(timeout=cfg["ready_timeout"]) for _ in workers)
        connect_s = time.time() - connect_started
        print(f"{connected} agents connected in {connect_s:.1f}s", file=sys.stderr)
        start = time.time() + 1.0
        start_at.value = start
        go.set()
        window = (start + args.warmup, start + args.warmup + args.seconds)
        rss: list[int] = []
        cpu_at: dict[str, float] = {}
        workers_cpu: dict[str, float] = {}
        hist: dict[str, dict] = {}
        host_cpu = None
        procs = [psutil.Process(w.pid) for w in workers]

        def ctl_cpu() -> float:
            t = ctl.cpu_times()
            return t.user + t.system

        def workers_cpu_now() -> float:
            return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

        marks = [("start", window[0]), ("end", window[1])]
        progress_db = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        while marks or time.time() < window[1] + 0.5:
            now = time.time()
            if marks and now >= marks[0][1]:
                name, _ = marks.pop(0)
                cpu_at[name], workers_cpu[name] = ctl_cpu(), workers_cpu_now()
                hist[name] = scrape_ack_histogram(metrics_url) if metrics_url else {}
                if name == "start":
                    psutil.cpu_percent(None)
                else:
                    host_cpu = psutil.cpu_percent(None)
                continue
            rss.append(ctl.memory_info().rss)
            if int(now) % 5 == 0:
                n = progress_db.execute("select max(rowid) from detections").fetchone()[0] or 0
                print(f"  t={now - start:5.1f}s  {n} frames committed  controller rss "
                      f"{rss[-1] / 2**20:.0f} MiB", file=sys.stderr)
            time.sleep(min(1.0, max(0.05, (marks[0][1] - time.time()) if marks else 1.0)))
        progress_db.close()
        agents, failures = [], []
        for _ in workers:
            worker, out, err = results.get(timeout=cfg["drain_timeout"] + 60)
            agents += out
            if err:
                failures.append(f"worker {worker}: {err}")
        for w in workers:
            w.join(30)
    finally:
        go.set()
        for w in workers:
            if w.is_alive():
                w.kill()
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(60)
        except subprocess.TimeoutExpired:
            controller.kill()
    store = check_store(db, agents, args.objects, window)
    in_window = [lat for a in agents for written, lat in a["latencies"] if window[0] <= written < window[1]]
    lag = [x for a in agents for written_lag in [a["send_lag"]] for x in written_lag]
    seconds = window[1] - window[0]
    ctl_log = (workdir / "controller.log").read_text(errors="replace")
    ingest = re.findall(r"ingest writer stopped: (.*)", ctl_log)
    connected_end = sum(1 for a in agents if a["connected_at"] and (a["failed_at"] is None or a["failed_at"] >= window[1]))
    return {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"agents": args.agents, "procs": args.procs, "seconds": args.seconds, "warmup": args.warmup,
                   "fps": args.fps, "objects": args.objects, "batch": args.batch,
                   "heartbeat_interval_s": args.heartbeat_interval, "profile": args.profile,
                   "offered_detections_per_s": args.agents * args.fps * args.objects},
        "workdir": str(workdir),
        "agents": {"connected": sum(1 for a in agents if a["connected_at"]),
                   "connected_through_window": connected_end, "connect_s": round(connect_s, 1),
                   "failed": sum(1 for a in agents if a["failed_at"]),
                   "errors": sorted({e for a in agents for e in a["errors"]})[:10],
                   "worker_failures": failures,
                   "batches": sum(a["batches"] for a in agents),
                   "heartbeats": sum(a["heartbeats"] for a in agents)},
        "committed": store["window"] | {"whole_run": store["whole_run"]},
        "ack_latency_ms": {
            "batches": len(in_window),
            "p50": _ms(percentile(in_window, 50)), "p90": _ms(percentile(in_window, 90)),
            "p99": _ms(percentile(in_window, 99)), "max": _ms(max(in_window) if in_window else None),
            "controller_histogram_p50_le": _ms(histogram_quantile(0.5, hist.get("start", {}), hist.get("end", {}))),
            "controller_histogram_p99_le": _ms(histogram_quantile(0.99, hist.get("start", {}), hist.get("end", {}))),
            "agent_send_lag_p99": _ms(percentile(lag, 99)),
        },
        "controller": {
            "cpu_percent_of_one_core": round(100 * (cpu_at["end"] - cpu_at["start"]) / seconds, 1),
            "rss_mib_max": round(max(rss) / 2**20, 1) if rss else None,
            "rss_mib_end": round(rss[-1] / 2**20, 1) if rss else None,
            "ingest": ingest[-1] if ingest else None,
            "gc": _gc_lines(workdir / "controller.prof.txt"),
        },
        "agents_cpu_percent_of_one_core": round(100 * (workers_cpu["end"] - workers_cpu["start"]) / seconds, 1),
        "host_cpu_percent_all_cores": host_cpu,
        "host_loadavg_1m": {"before": round(loadavg_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "integrity": {k: store[k] for k in ("rows", "lost", "duplicated", "unexpected", "sent_but_unacked",
                                             "device_counter_mismatches", "frames_with_wrong_object_count")}
                     | {"ack_reported_duplicates": sum(a["ack_duplicates"] for a in agents)},
    }


def _gc_lines(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    return [line for line in path.read_text().splitlines() if line.startswith("gc ")]


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return math.inf if math.isinf(seconds) else round(1000 * seconds, 1)


def summary(r: dict) -> str:
    c, lat, ctl, integ = r["committed"], r["ack_latency_ms"], r["controller"], r["integrity"]
    lines = [
        (f"agents: {r['agents']['connected']}/{r['config']['agents']} connected "
         f"({r['agents']['connected_through_window']} through the window, {r['agents']['failed']} failed)"),
        (f"committed: {c['detections_per_s']:.0f} detections/s over {c['seconds']:.0f}s "
         f"(offered {r['config']['offered_detections_per_s']:.0f}; 1s min {c['detections_per_s_min_1s']}, "
         f"max {c['detections_per_s_max_1s']}); {c['frames_per_s']:.0f} frames/s"),
        (f"publish->ack: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
         f"(controller histogram p99 <= {lat['controller_histogram_p99_le']} ms)"),
        (f"controller: {ctl['cpu_percent_of_one_core']}% of one core, rss max {ctl['rss_mib_max']} MiB; "
         f"agents {r['agents_cpu_percent_of_one_core']}% of one core; host {r['host_cpu_percent_all_cores']}% "
         f"(load average before {r['host_loadavg_1m']['before']}, after {r['host_loadavg_1m']['after']})"),
        f"ingest: {ctl['ingest']}",
        (f"integrity: {integ['rows']} rows, lost {integ['lost']}, duplicated {integ['duplicated']}, "
         f"unexpected {integ['unexpected']}, unacked at end {integ['sent_but_unacked']}, "
         f"ack-reported duplicates {integ['ack_reported_duplicates']}"),
    ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--_controller":  # internal: the profiled controller process
        return instrumented_controller(sys.argv[4:], Path(sys.argv[2]), profile=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=8, help="worker processes the agents are spread over")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady window that is measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="publishing before the window starts")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second per agent")
    parser.add_argument("--objects", type=int, default=5, help="detections per frame")
    parser.add_argument("--batch", type=int, default=8, help="frames per DetectionBatch")
    parser.add_argument("--heartbeat-interval", type=int, default=5, help="the controller's heartbeat interval (s)")
    parser.add_argument("--workdir", help="controller db and log (default: a new temporary folder)")
    parser.add_argument("--profile", action="store_true", help="cProfile the controller (workdir/controller.prof.txt)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.agents < 1 or args.procs < 1 or args.batch < 1 or args.fps <= 0 or args.objects < 0:
        parser.error("--agents, --procs, --batch must be >= 1, --fps > 0, --objects >= 0")
    args.procs = min(args.procs, args.agents)
    result = run(args)
    write_report(result, args.out)
    print(summary(result), file=sys.stderr)
    ok = result["integrity"]["lost"] == 0 and result["integrity"]["duplicated"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
