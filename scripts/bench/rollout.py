#!/usr/bin/env python3
"""A rollout of one large artifact to many simulated devices, against a real controller process.

    python scripts/bench/rollout.py [--devices 200] [--procs 4] [--mb 35] [--waves 10,50,100]
                                    [--chunk-kb 1024] [--fetch-streams N] [--out var/bench/rollout.json]

1. A controller in its own process (`python -m edgefleet.fleet.cli serve`, metrics on), a fresh database.
2. `--procs` worker processes share `--devices` simulated devices on asyncio loops. Each one
   enrolls (a CPU profile with onnxruntime), opens a Session, and on DeployArtifact verifies
   the manifest's Ed25519 signature with the key it got at enrollment, streams FetchArtifact
   into a sha256 (nothing kept; resuming where a stream's turn ended), checks size and hash, and
   reports DOWNLOADING (with progress), VERIFYING and ACTIVE. No model is loaded: this measures
   the controller's distribution.
3. `--mb` MB of random bytes pushed as an ONNX-format artifact; a rollout with a canary of one
   and `--waves`; the wall time from CreateRollout to SUCCEEDED, per wave, the bytes the devices
   received and the controller counted (`edgefleet_artifact_bytes_served_total`), the
   controller's peak RSS and CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(Path(__file__).resolve().parent)]

from controller import fleet_cli, metric, start_controller  # (scripts/bench/controller.py)
from report import write_report  # (scripts/bench/report.py)

# ---- simulated devices (worker processes) ----

async def device(index: int, address: str, key: str, chunk_kb: int, received: list[int]) -> None:
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

    options = [("grpc.max_receive_message_length", 16 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        profile = types_pb2.HardwareProfile(platform="x86_64-cpu", onnxruntime_providers=["CPUExecutionProvider"])
        enrolled = await stub.Enroll(agent_pb2.EnrollRequest(
            enroll_key=key, hardware_id=f"bench-{index}", hostname=f"sim-{index:04d}", profile=profile), timeout=60)
        public_key = Ed25519PublicKey.from_public_bytes(enrolled.controller_public_key)
        metadata = (("authorization", f"Bearer {enrolled.device_token}"),)
        up: asyncio.Queue = asyncio.Queue()
        await up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="bench", profile=profile)))

        async def messages():
            while (message := await up.get()) is not None:
                yield message

        def status(deploy, state, progress=0.0, reason=""):
            return agent_pb2.AgentMessage(deployment=types_pb2.DeploymentStatus(
                rollout_id=deploy.rollout_id, artifact_sha256=deploy.artifact.manifest.sha256,
                state=state, progress=progress, reason=reason))

        async for down in stub.Session(messages(), metadata=metadata):
            if down.WhichOneof("body") != "command" or down.command.WhichOneof("action") != "deploy":
                continue
            deploy = down.command.deploy
            manifest = deploy.artifact.manifest
            public_key.verify(deploy.artifact.signature, manifest.SerializeToString(deterministic=True))
            digest, size, next_report = hashlib.sha256(), 0, 0.25
            await up.put(status(deploy, types_pb2.DeploymentStatus.DOWNLOADING))
            while size < manifest.size_bytes:  # a stream ends when its turn does (--fetch-stream-s): resume
                before = size
                async for chunk in stub.FetchArtifact(agent_pb2.FetchArtifactRequest(
                        sha256=manifest.sha256, offset=size, chunk_size=chunk_kb << 10), metadata=metadata):
                    digest.update(chunk.data)
                    size += len(chunk.data)
                    if size / chunk.total_size >= next_report:
                        await up.put(status(deploy, types_pb2.DeploymentStatus.DOWNLOADING, size / chunk.total_size))
                        next_report += 0.25
                if size == before:
                    break
            received.append(size)
            await up.put(status(deploy, types_pb2.DeploymentStatus.VERIFYING))
            ok = size == manifest.size_bytes and digest.hexdigest() == manifest.sha256
            await up.put(status(deploy, types_pb2.DeploymentStatus.ACTIVE if ok else types_pb2.DeploymentStatus.FAILED,
                                reason="" if ok else "sha256 mismatch"))


def worker(indices: list[int], address: str, key: str, chunk_kb: int, results: mp.Queue, stop: mp.Event) -> None:
    async def main():
        received: list[int] = []
        tasks = [asyncio.create_task(device(i, address, key, chunk_kb, received)) for i in indices]
        while not stop.is_set():
            await asyncio.sleep(0.2)
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                results.put(("error", repr(failed[0].exception())))
                break
        for t in tasks:
            t.cancel()
        results.put(("received", sum(received), len(received)))

    asyncio.run(main())


# ---- the run ----

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--mb", type=float, default=35.0)
    parser.add_argument("--waves", default="10,50,100")
    parser.add_argument("--chunk-kb", type=int, default=0, help="FetchArtifact chunk size (0: the controller's)")
    parser.add_argument("--fetch-streams", type=int, default=0,
                        help="the controller's --fetch-streams (0: its default)")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def wait_connected(control, devices: int, timeout: float = 300.0) -> float:
    """Until `devices` devices are enrolled and connected; the seconds that took."""
    from edgefleet.v1 import fleet_pb2

    t0 = time.monotonic()
    while True:
        listed = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=30).devices
        if len(listed) >= devices and sum(d.connected for d in listed) >= devices:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"devices did not all connect within {timeout:.0f} s")
        time.sleep(0.5)


def push_random(control, mb: float):
    """Upload `mb` MB of random bytes as an ONNX-format artifact; (its reply, the seconds it took)."""
    from edgefleet.v1 import fleet_pb2, types_pb2

    data = os.urandom(int(mb * 1e6))

    def upload():
        yield fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(
            name=f"bench-{mb:.0f}mb", format="onnx", input_width=640, input_height=640))
        for i in range(0, len(data), 1 << 20):
            yield fleet_pb2.UploadArtifactRequest(chunk=data[i:i + (1 << 20)])

    t0 = time.monotonic()
    artifact = control.UploadArtifact(upload(), timeout=300)
    return artifact, time.monotonic() - t0


def follow_rollout(control, rollout, t_start: float, timeout: float = 1200.0):
    """Poll the rollout until it ends; (its last state, wave index -> seconds after t_start it was done)."""
    from edgefleet.v1 import fleet_pb2

    wave_done: dict[int, float] = {}
    while rollout.state not in (fleet_pb2.SUCCEEDED, fleet_pb2.FAILED, fleet_pb2.ABORTED):
        time.sleep(0.2)
        rollout = control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id), timeout=30)
        for w in rollout.waves:
            if w.succeeded + w.failed == w.target and w.index not in wave_done:
                wave_done[w.index] = round(time.monotonic() - t_start, 2)
        if time.monotonic() - t_start > timeout:
            raise SystemExit(f"the rollout did not finish within {timeout / 60:.0f} minutes")
    return rollout, wave_done


def collect(results: mp.Queue, workers: int) -> tuple[int, int]:
    """(bytes the simulated devices received, downloads they finished), summed over the workers."""
    received = devices_done = 0
    for _ in range(workers):
        kind, *rest = results.get(timeout=60)
        if kind == "error":
            raise SystemExit(f"a simulated device failed: {rest[0]}")
        received += rest[0]
        devices_done += rest[1]
    return received, devices_done


class PeakRss:
    """Samples a process's RSS every 0.1 s on a thread, from start() to stop()."""

    def __init__(self, process) -> None:
        self.process = process
        self.samples = [process.memory_info().rss]
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            time.sleep(0.1)


def main() -> int:
    args = parse_args()

    import psutil

    from edgefleet.fleet.channel import open_channel
    from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-rollout-bench-"))
    key = "efk_bench"
    token = fleet_cli("operator-token", "create", "--db", str(workdir / "fleet.db"), "--create")
    flags = ["--fetch-streams", str(args.fetch_streams)] if args.fetch_streams else []
    started = start_controller(workdir, "--enroll-key", key, "--heartbeat-interval", "5", *flags,
                               log_level="warning")
    proc, address = started.proc, started.address
    ps = psutil.Process(proc.pid)
    results: mp.Queue = mp.Queue()
    stop = mp.Event()
    workers = [mp.Process(target=worker, args=(list(range(p, args.devices, args.procs)), address, key, args.chunk_kb,
                                               results, stop))
               for p in range(args.procs)]
    rss = PeakRss(ps)
    try:
        for w in workers:
            w.start()
        with open_channel(address, token=token, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
            control = fleet_pb2_grpc.FleetControlStub(channel)
            print(f"{args.devices} devices connected in {wait_connected(control, args.devices):.1f} s", flush=True)
            artifact, push_s = push_random(control, args.mb)
            rss.start()
            cpu0 = ps.cpu_times()
            t_start = time.monotonic()
            rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(
                artifact_sha256=artifact.manifest.sha256, canary=1,
                waves_percent=[int(w) for w in args.waves.split(",")]), timeout=60)
            rollout, wave_done = follow_rollout(control, rollout, t_start)
            wall_s = time.monotonic() - t_start
            cpu1 = ps.cpu_times()
            rss.stop()
            served = metric(started.metrics_url, "edgefleet_artifact_bytes_served_total")
        stop.set()
        received, devices_done = collect(results, len(workers))
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.terminate()
        proc.terminate()
        proc.wait(10)
    size = artifact.manifest.size_bytes
    result = {
        "benchmark": "rollout",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "devices": args.devices, "procs": args.procs, "artifact_bytes": size, "chunk_kb": args.chunk_kb,
        "waves": [
            {"index": w.index, "target": w.target, "succeeded": w.succeeded, "failed": w.failed,
             "done_after_s": wave_done.get(w.index)} for w in rollout.waves],
        "state": fleet_pb2.RolloutState.Name(rollout.state),
        "push_s": round(push_s, 2),
        "wall_s": round(wall_s, 2),
        "devices_downloaded": devices_done,
        "bytes_received_by_devices": received,
        "bytes_served_by_controller": int(served),
        "expected_bytes": size * args.devices,
        "throughput_mb_s": round(served / wall_s / 1e6, 1),
        "controller_peak_rss_mb": round(max(rss.samples) / 1e6, 1),
        "controller_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
    }
    write_report(result, args.out)
    print(f"{args.devices} devices, {size / 1e6:.0f} MB artifact: {result['state']} in {wall_s:.1f} s, "
          f"{served / 1e9:.2f} GB served ({result['throughput_mb_s']} MB/s), controller peak RSS "
          f"{result['controller_peak_rss_mb']} MB")
    return 0 if rollout.state == fleet_pb2.SUCCEEDED and received == size * args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
