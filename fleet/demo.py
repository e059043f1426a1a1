"""`edgefleet demo`: a controller and a few agents on the sample videos, on this machine.

Everything is a real process talking real gRPC on loopback; state lives under --workdir. The agents
on vtest.avi count the people who cross the walkway (a line across it, `walkway`) and who enter the
square by the lamp post (a zone, `square`), set in each agent's agent.yaml `analytics:` section; the
TUI shows the counts and each stream's latest annotated frame, the text mode prints the counts.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from .channel import open_channel
from .cli_common import local_midnight
from .store import FleetStore

DEMO_KEY = "efk_demo"
SAMPLE_ORDER = ("vtest.avi", "bikes.mp4")
SITES = ("lab", "yard")
"""The demo devices' `site` labels, in turn (the TUI's counts screen sums by site)."""

ANALYTICS = {
    "vtest.avi": {"cam0": {
        "units": "fraction",
        # People walk left and right along the walkway, which runs from the left edge (about a fifth of
        # the way down) to the right edge (about half way down): a line across it, left of the lamp post,
        # from the grass below to the car park above. Drawn upwards, `in` is walking to the right.
        "lines": {"walkway": {"points": [[0.45, 0.85], [0.45, 0.15]], "labels": ["person"]}},
        # The square right of the lamp post, where the walkway widens towards the building.
        "zones": {"square": {"polygon": [[0.55, 0.3], [0.99, 0.3], [0.99, 0.95], [0.55, 0.8]], "labels": ["person"]}},
    }},
}
"""agent.yaml `analytics:` by sample video (fractions of the frame, docs/zones.md)."""


@dataclass
class DemoAgent:
    name: str
    source: Path
    process: subprocess.Popen
    log: Path


@dataclass
class DeviceView:
    device_id: str
    name: str
    stored: int = 0
    fps: float = 0.0
    inference_ms: float = 0.0
    det_per_s: float = 0.0
    last_labels: list[str] = field(default_factory=list)
    counts: str = ""


def _operator_token(db: Path) -> str:
    """The demo's own operator token, created in the database before the controller opens it."""
    store = FleetStore(db)
    try:
        return store.create_operator_token("demo")
    finally:
        store.close()


def _start_controller(workdir: Path) -> tuple[subprocess.Popen, str]:
    log = (workdir / "controller.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.fleet.cli", "serve", "--listen", "127.0.0.1:0",
         "--db", str(workdir / "fleet.db"), "--enroll-key", DEMO_KEY, "--heartbeat-interval", "1"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"controller did not start; see {workdir / 'controller.log'}")
    return proc, line.split("listening on", 1)[1].split()[0]


def _agent_config(name: str, source: Path, workdir: Path) -> list[str]:
    """`--config FILE` with the sample's zones and lines, when it has any (none: no flag)."""
    analytics = ANALYTICS.get(source.name)
    if not analytics:
        return []
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"analytics": analytics}, sort_keys=False))
    return ["--config", str(path)]


def _start_agent(i: int, source: Path, address: str, workdir: Path, threads: int) -> DemoAgent:
    name = f"demo-cam{i + 1}"
    log = workdir / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", address, "--source", str(source), "--loop",
         "--pace", "realtime", "--state-dir", str(workdir / name), "--enroll-key", DEMO_KEY, "--name", name,
         "--drain-timeout", "10", "--threads", str(threads), "--label", f"site={SITES[i % len(SITES)]}",
         *_agent_config(name, source, workdir)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    return DemoAgent(name, source, proc, log)


def _counts_today(stub) -> dict[str, str]:
    """Each device's zone entries and line crossings since local midnight, in words: `walkway in 3 · out 1`."""
    request = fleet_pb2.CountObjectsRequest(group_by=["device"])
    request.since.FromSeconds(int(local_midnight(time.time())))
    sums: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for bucket in stub.CountObjects(request, timeout=5).buckets:
        sums[bucket.device_id][f"{bucket.name} {bucket.direction}"] += bucket.count
    return {device: " · ".join(f"{what} {n}" for what, n in sorted(counter.items()))
            for device, counter in sums.items()}


def _snapshot(stub, totals: dict[str, int], dt: float) -> list[DeviceView]:
    """One view per device; `totals` carries each device's object count between calls."""
    views = []
    counts = _counts_today(stub)
    for device in stub.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices:
        view = DeviceView(device.device_id, device.hostname, device.detections_stored,
                          device.health.fps, device.health.inference_ms_p50, counts=counts.get(device.device_id, ""))
        recent = stub.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device.device_id, limit=1), timeout=5)
        if recent.frames:
            view.last_labels = [d.label for d in recent.frames[-1].detections]
        total = device.health.detections_total
        if device.device_id in totals and dt > 0:
            view.det_per_s = max(0.0, (total - totals[device.device_id]) / dt)
        totals[device.device_id] = total
        views.append(view)
    return sorted(views, key=lambda v: v.name)


def _line(view: DeviceView) -> str:
    labels = collections.Counter(view.last_labels)
    shown = ", ".join(f"{n}x {label}" if n > 1 else label for label, n in labels.most_common(4)) or "-"
    counted = f"  counted: {view.counts}" if view.counts else ""
    return (f"  {view.name:<11} {view.fps:5.1f} fps  infer {view.inference_ms:5.1f} ms  "
            f"{view.det_per_s:5.1f} det/s  stored {view.stored:>6}  last: {shown}{counted}")


def _label_counts(stub, device_id: str) -> collections.Counter:
    frames = stub.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device_id, limit=10_000), timeout=10)
    return collections.Counter(d.label for f in frames.frames for d in f.detections)


def _live_text(stub, agents: list, duration: float, stopping: dict) -> None:
    """One status line per device, redrawn in place on a terminal, appended otherwise."""
    interactive = sys.stdout.isatty()
    print("live (Ctrl-C to stop):" if not duration else f"live for {duration:.0f}s:")
    start = last = time.monotonic()
    totals: dict[str, int] = {}
    lines_drawn = 0
    while not stopping["flag"] and (not duration or time.monotonic() - start < duration):
        time.sleep(1.0 if interactive else 5.0)
        if any(a.process.poll() is not None for a in agents):
            dead = [a.name for a in agents if a.process.poll() is not None]
            print(f"agent(s) exited early: {dead}; see their logs", file=sys.stderr)
            return
        now = time.monotonic()
        views = _snapshot(stub, totals, now - last)
        last = now
        lines = [_line(v) for v in views] or ["  waiting for agents..."]
        if interactive and lines_drawn:
            sys.stdout.write(f"\x1b[{lines_drawn}F")
        sys.stdout.write("".join(f"\x1b[2K{line}\n" if interactive else f"{line}\n" for line in lines))
        if not interactive:
            sys.stdout.write("\n")
        sys.stdout.flush()
        lines_drawn = len(lines)


def run_demo(args) -> int:
    samples = [args.samples / name for name in SAMPLE_ORDER if (args.samples / name).exists()]
    if not samples:
        print(f"edgefleet demo: no sample videos in {args.samples}; run `make samples`", file=sys.stderr)
        return 2
    if args.agents < 1:
        print("edgefleet demo: --agents must be >= 1", file=sys.stderr)
        return 2
    from edgefleet.models.bundled import default_model

    print(f"model: {default_model()}")
    workdir = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    token = _operator_token(workdir / "fleet.db")
    controller, address = _start_controller(workdir)
    print(f"controller: {address} (db {workdir / 'fleet.db'}, log {workdir / 'controller.log'})")
    threads = max(1, (os.cpu_count() or 1) // args.agents)  # agents share the cores, not oversubscribe them
    agents = [_start_agent(i, samples[i % len(samples)], address, workdir, threads) for i in range(args.agents)]
    for agent in agents:
        print(f"agent {agent.name}: {agent.source.name} (log {agent.log})")
    channel = open_channel(address, token=token)
    stub = fleet_pb2_grpc.FleetControlStub(channel)
    stopping = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: stopping.update(flag=True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(flag=True))
    try:
        if sys.stdout.isatty() and not args.text:  # the fleet TUI in the foreground; `q` quits
            subprocess.run([sys.executable, "-m", "edgefleet.tui", "--controller", address, "--log-file",
                            str(workdir / "tui.log"), "--duration", str(args.duration)],
                           env={**os.environ, "EDGEFLEET_TOKEN": token}, check=False)
        else:
            _live_text(stub, agents, args.duration, stopping)
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        for agent in agents:
            try:
                agent.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.process.kill()
    ok = _summary(stub, agents)
    channel.close()
    controller.send_signal(signal.SIGTERM)
    try:
        controller.wait(timeout=10)
    except subprocess.TimeoutExpired:
        controller.kill()
    return 0 if ok else 1


def _summary(stub, agents: list[DemoAgent]) -> bool:
    devices = {d.hostname: d for d in stub.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices}
    counts = _counts_today(stub)
    print("\nsummary:")
    ok = True
    for agent in agents:
        device = devices.get(agent.name)
        code = agent.process.returncode
        if device is None:
            print(f"  {agent.name:<11} NOT REGISTERED (exit {code}; see {agent.log})")
            ok = False
            continue
        labels = _label_counts(stub, device.device_id)
        top = ", ".join(f"{label} {n}" for label, n in labels.most_common(5)) or "nothing"
        objects = stub.ListObjects(fleet_pb2.ListObjectsRequest(device_id=device.device_id, limit=1000), timeout=10)
        print(f"  {agent.name:<11} registered as {device.device_id}: {device.detections_stored} frames stored, "
              f"acked up to {device.acked_sequence}, agent exit {code}; detections: {top}; "
              f"{len(objects.objects)}{'+' if objects.next_page_token else ''} objects tracked; "
              f"counted: {counts.get(device.device_id) or 'nothing'}")
        if code not in (0, None) or device.detections_stored == 0:
            ok = False
        if agent.source.name == "vtest.avi" and labels["person"] == 0:
            print(f"  {agent.name:<11} saw no person in vtest.avi")
            ok = False
    print("demo: ok" if ok else "demo: FAILED")
    return ok

