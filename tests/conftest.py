"""Shared fixtures: real controllers on 127.0.0.1:0, real sample videos, real processes."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def samples_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_SAMPLES", ROOT / "var" / "samples"))


@pytest.fixture(scope="session")
def vtest() -> Path:
    path = samples_dir() / "vtest.avi"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make samples` (or `make test`, which fetches it)")
    return path


class ControllerThread:
    """A real Controller serving on 127.0.0.1:0 from its own event loop thread.

    `options` go to `Controller` (tls, stale_after_s, offline_after_s). `operator_token` is a
    valid operator token for FleetControl calls.
    """

    def __init__(self, db_path: Path, heartbeat_interval_s: int = 1, enroll_keys=("efk_test",),
                 listen: str = "127.0.0.1:0", **options):
        from edgefleet.fleet.server import Controller

        self.controller = Controller(db_path, listen, heartbeat_interval_s=heartbeat_interval_s, **options)
        for key in enroll_keys:
            self.controller.store.create_enroll_key("test", key)
        self.operator_token = self.controller.store.create_operator_token("test")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.run(self.controller.start())
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.controller.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def controller(tmp_path):
    ctl = ControllerThread(tmp_path / "fleet.db")
    yield ctl
    ctl.stop()


@pytest.fixture
def channel(controller):
    with grpc.insecure_channel(controller.address) as ch:
        yield ch


@pytest.fixture
def control(controller):
    """FleetControl as the test's operator."""
    from edgefleet.fleet.channel import open_channel
    from edgefleet.v1 import fleet_pb2_grpc

    with open_channel(controller.address, token=controller.operator_token) as ch:
        yield fleet_pb2_grpc.FleetControlStub(ch)


def run_cli(module: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> ARGS` as a real process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )


def read_frames(video: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Frames `indices` of `video`, decoded by OpenCV, by index."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames, wanted = {}, set(indices)
    try:
        for index in range(max(indices) + 1):
            ok, frame = cap.read()
            assert ok, f"{video} ended before frame {index}"
            if index in wanted:
                frames[index] = frame
    finally:
        cap.release()
    return frames


def first_frames(video: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of `video`, in order."""
    return list(read_frames(video, list(range(count))).values())


def bus_jpg() -> Path | None:
    """Ultralytics' bus.jpg, found without importing Ultralytics (and torch); None without it."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    return Path(spec.origin).parent / "assets" / "bus.jpg" if spec else None


def free_port() -> int:
    """A loopback port nothing listens on now (for servers a test starts, or to be refused on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, what: str = ""):
    """Poll `predicate` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
