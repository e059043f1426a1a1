#!/usr/bin/env python3
"""Fleet TUI under load: time per coalesced apply and per frame with 1,000 devices reporting.

    python scripts/bench/tui.py [--devices 1000] [--seconds 10] [--rate 1000] [--burst 10000]
                                [--feed local|controller] [--sort fps] [--size 80x24] [--out FILE]

The real `FleetApp` runs headless (Textual's test driver: layout and rendering happen, only
the terminal write is skipped). Updates come from one of two feeds:

- `local` (default): a producer thread puts `DeviceView` updates into the app's coalescer at
  `--rate` per second, round-robin over the devices (the app's own WatchFleet thread sits on
  an empty stream), then a burst of `--burst` updates as fast as it can (a reconnect storm).
  This isolates the UI: no gRPC, no SQLite.
- `controller`: a child process runs a real controller on 127.0.0.1:0 and `--devices`
  simulated agents (grpc.aio Sessions in one event loop) heartbeating so that the fleet sends
  about `--rate` per second; the app follows WatchFleet as in production. The controller (one
  SQLite writer) may be the bottleneck; `delivered_per_s` says what actually reached the app.

Measured: `apply_ms` = one `apply_pending()` (drain, fold into state, update the visible
table's cells and order); `frame_ms` = one screen refresh (layout + render of what changed);
items per apply. p50/p95/max per phase. Writes JSON (stdout, or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import write_report  # (scripts/bench/report.py)
from textual.screen import Screen

from edgefleet.tui.app import FleetApp
from edgefleet.tui.errors import Unimplemented
from edgefleet.tui.views import DeviceView, Health, Plan

PLATFORMS = ("jetson-orin-nano", "rpi5", "rpi4", "x86_64-cpu", "x86_64-nvidia")
PLAN = Plan(model="yolov3-tiny-coco", backend="onnxruntime", precision="fp32", input_width=416,
            input_height=416, detect_interval=2)


# ---- measuring ----

class Timings:
    def __init__(self) -> None:
        self.phase = "idle"
        self.apply: dict[str, list[tuple[float, int]]] = {}
        self.frame: dict[str, list[float]] = {}

    def summary(self) -> dict:
        out = {}
        for phase in self.apply.keys() | self.frame.keys():
            applies = self.apply.get(phase, [])
            frames = self.frame.get(phase, [])
            out[phase] = {
                "applies": len(applies),
                "items": sum(n for _, n in applies),
                "items_per_apply": _stats([n for _, n in applies], 1),
                "apply_ms": _stats([t * 1000 for t, _ in applies]),
                "frames": len(frames),
                "frame_ms": _stats([t * 1000 for t in frames]),
            }
        return out


def _stats(values: list[float], digits: int = 2) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), digits),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], digits),
            "max": round(ordered[-1], digits)}


def instrument_frames(timings: Timings) -> None:
    """Time every screen refresh (layout + compositor render) of the running app."""
    original = Screen._on_timer_update

    def timed(self) -> None:
        start = time.perf_counter()
        original(self)
        timings.frame.setdefault(timings.phase, []).append(time.perf_counter() - start)

    Screen._on_timer_update = timed


class BenchApp(FleetApp):
    def __init__(self, *args, timings: Timings, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings = timings

    def apply_pending(self):
        before = self.state.applied_items
        start = time.perf_counter()
        changes = super().apply_pending()
        elapsed = time.perf_counter() - start
        if changes is not None:
            self.timings.apply.setdefault(self.timings.phase, []).append(
                (elapsed, self.state.applied_items - before))
        return changes


# ---- local feed ----

class _Quiet:
    def __init__(self):
        self._done = threading.Event()

    def __iter__(self):
        self._done.wait()
        return iter(())

    def cancel(self) -> None:
        self._done.set()


class LocalClient:
    """No controller: the bench puts updates into the app's coalescer itself."""

    address = "local-feed"

    def close(self) -> None:
        pass

    def list_devices(self) -> list[DeviceView]:
        return []

    def watch_fleet(self) -> _Quiet:
        return _Quiet()

    def watch_detections(self, device_id: str) -> _Quiet:
        return _Quiet()

    def list_rollouts(self):
        raise Unimplemented("ListRollouts", "UNIMPLEMENTED", "")


def make_devices(n: int, now: float) -> list[DeviceView]:
    rng = random.Random(7)
    return [DeviceView(
        device_id=f"cam{i:04d}-{rng.randrange(16 ** 6):06x}", hostname=f"cam{i:04d}", status="online",
        last_seen=now, platform=PLATFORMS[i % len(PLATFORMS)], plan=PLAN, connected=True,
        health=Health(time=now, fps=rng.uniform(5, 30), latency_ms_p95=rng.uniform(20, 300),
                      temperature_c=rng.uniform(40, 80), outbox_depth=0, detections_total=0),
    ) for i in range(n)]


def heartbeat(device: DeviceView, rng: random.Random, now: float) -> DeviceView:
    h = device.health
    status = "online" if rng.random() > 0.02 else rng.choice(("stale", "offline"))
    return replace(device, last_seen=now, status=status, health=replace(
        h, time=now, fps=max(0.0, h.fps + rng.uniform(-1, 1)),
        latency_ms_p95=max(1.0, h.latency_ms_p95 + rng.uniform(-5, 5)),
        temperature_c=h.temperature_c + rng.uniform(-0.5, 0.5), outbox_depth=rng.randrange(0, 50),
        detections_total=h.detections_total + rng.randrange(0, 40)))


def run_local(app: BenchApp, timings: Timings, args) -> dict:
    """Feed from a thread while the app runs; returns what was fed."""
    rng = random.Random(11)
    devices = make_devices(args.devices, time.time())
    fed = {"snapshot": len(devices), "steady": 0, "burst": 0}

    def produce() -> None:
        timings.phase = "snapshot"
        app.coalescer.snapshot(devices)
        time.sleep(1.0)
        timings.phase = "steady"
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < args.seconds:
            due = int((time.monotonic() - start) * args.rate)
            while i < due:
                k = i % len(devices)
                devices[k] = heartbeat(devices[k], rng, time.time())
                app.coalescer.put(devices[k])
                i += 1
            time.sleep(0.005)
        fed["steady"] = i
        time.sleep(1.0)
        timings.phase = "burst"
        now = time.time()
        for j in range(args.burst):
            k = j % len(devices)
            devices[k] = heartbeat(devices[k], rng, now)
            app.coalescer.put(devices[k])
        fed["burst"] = args.burst
        time.sleep(2.0)
        timings.phase = "done"

    return _drive(app, produce, fed)


# ---- controller feed ----

def serve_fleet(args) -> int:
    """Child process: a real controller and `--devices` simulated agents, until stdin closes.

    Prints `{"address", "token"}` once everything is enrolled, and `{"heartbeats"}` at the end.
    A separate process, so the app under test does not share its GIL with the fleet.
    """
    import grpc

    from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2
    from tests.conftest import ControllerThread

    interval = args.devices / args.rate
    tmp = tempfile.TemporaryDirectory()
    ctl = ControllerThread(Path(tmp.name) / "fleet.db", heartbeat_interval_s=max(1, round(interval)))
    sent = {"heartbeats": 0}
    stop = threading.Event()

    async def agent(stub, i: int, enrolled: asyncio.Event) -> None:
        reply = await stub.Enroll(agent_pb2.EnrollRequest(
            enroll_key="efk_test", hardware_id=f"hw-{i}", hostname=f"cam{i:04d}",
            profile=types_pb2.HardwareProfile(platform=PLATFORMS[i % len(PLATFORMS)])), timeout=120)
        metadata = (("authorization", f"Bearer {reply.device_token}"),)
        rng = random.Random(i)
        plan = types_pb2.RuntimePlan(model=PLAN.model, backend=PLAN.backend, precision=PLAN.precision,
                                     input_width=416, input_height=416, detect_interval=2)

        async def up():
            yield agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="bench", streams=["cam0"], plan=plan))
            await enrolled.wait()
            await asyncio.sleep(rng.uniform(0, interval))
            seq = total = 0
            while not stop.is_set():
                seq += 1
                total += rng.randrange(0, 40)
                yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=seq, health=types_pb2.HealthSample(
                    fps=rng.uniform(5, 30), latency_ms_p95=rng.uniform(20, 300), temperature_c=rng.uniform(40, 80),
                    detections_total=total, outbox_depth=rng.randrange(50))))
                sent["heartbeats"] += 1
                await asyncio.sleep(interval)

        try:
            async for _ in stub.Session(up(), metadata=metadata):
                pass
        except grpc.aio.AioRpcError:
            pass

    async def fleet() -> None:
        async with grpc.aio.insecure_channel(ctl.address) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            enrolled = asyncio.Event()
            tasks = [asyncio.create_task(agent(stub, i, enrolled)) for i in range(args.devices)]
            await asyncio.sleep(0)
            print(json.dumps({"address": ctl.address, "token": ctl.operator_token}), flush=True)
            enrolled.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    runner = threading.Thread(target=lambda: asyncio.run(fleet()), daemon=True)
    runner.start()
    sys.stdin.read()  # until the parent closes it
    stop.set()
    runner.join(10)
    print(json.dumps({"heartbeats": sent["heartbeats"]}), flush=True)
    ctl.stop()
    tmp.cleanup()
    return 0


def run_controller(app_factory, timings: Timings, args) -> dict:
    import subprocess

    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-fleet", "--devices", str(args.devices), "--rate", str(args.rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    hello = json.loads(child.stdout.readline())
    app = app_factory(hello["address"], hello["token"])
    interval = args.devices / args.rate
    fed: dict = {}

    def produce() -> None:
        deadline = time.monotonic() + 180
        while len(app.state.devices) < args.devices and time.monotonic() < deadline:
            time.sleep(0.2)
        fed["devices_seen"] = len(app.state.devices)
        time.sleep(interval + 2)  # enrolment and session bursts are over
        before, start = app.state.applied_items, time.monotonic()
        timings.phase = "steady"
        time.sleep(args.seconds)
        timings.phase = "done"
        fed["delivered_per_s"] = round((app.state.applied_items - before) / (time.monotonic() - start), 1)
        fed["server_dropped"] = app.state.server_dropped

    try:
        return _drive(app, produce, fed)
    finally:
        child.stdin.close()
        try:
            fed["heartbeats_sent"] = json.loads(child.stdout.readline() or "{}").get("heartbeats")
            child.wait(30)
        except (subprocess.TimeoutExpired, ValueError):
            child.kill()


# ---- driving the app ----

def _drive(app: BenchApp, produce, fed: dict) -> dict:
    async def scenario() -> None:
        width, height = app.bench_size
        async with app.run_test(size=(width, height)) as pilot:
            while app.state.connection.state != "connected":
                await pilot.pause(0.05)
            if app.bench_sort != "device":
                await pilot.press(*["s"] * (["device", "status", "fps", "p95", "dps", "temp", "outbox"]
                                            .index(app.bench_sort)))
            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            while producer.is_alive():
                await pilot.pause(0.1)
            fed["devices_shown"] = len(app.state.devices)

    asyncio.run(scenario())
    return fed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the steady phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="device updates per second in the steady phase")
    parser.add_argument("--burst", type=int, default=10_000, help="updates put at once after the steady phase (local)")
    parser.add_argument("--feed", choices=("local", "controller"), default="local")
    parser.add_argument("--apply-hz", type=float, default=4.0)
    parser.add_argument("--sort", default="fps", choices=("device", "status", "fps", "p95", "dps", "temp", "outbox"))
    parser.add_argument("--size", default="80x24", help="terminal WxH")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve-fleet", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve_fleet:
        return serve_fleet(args)
    width, height = (int(v) for v in args.size.lower().split("x"))

    timings = Timings()
    instrument_frames(timings)

    def app_factory(address: str, token: str, client=None) -> BenchApp:
        app = BenchApp(address, token, client=client, apply_hz=args.apply_hz, timings=timings)
        app.bench_size = (width, height)
        app.bench_sort = args.sort
        return app

    if args.feed == "local":
        fed = run_local(app_factory("local-feed", "", LocalClient()), timings, args)
    else:
        fed = run_controller(app_factory, timings, args)
    phases = timings.summary()
    phases.pop("idle", None)
    phases.pop("done", None)
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_avg_1m": round(os.getloadavg()[0], 2)},
        "config": {"feed": args.feed, "devices": args.devices, "rate_per_s": args.rate, "seconds": args.seconds,
                   "burst": args.burst if args.feed == "local" else 0, "apply_hz": args.apply_hz, "sort": args.sort,
                   "size": f"{width}x{height}"},
        "fed": fed,
        "phases": phases,
    }
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
