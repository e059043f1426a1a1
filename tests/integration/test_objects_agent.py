"""Objects, counts and snapshots with real processes: an `edge-agent run` on vtest.avi with a counting line
commits object events, count rows and snapshot JPEGs to its outbox, and a real controller stores them
(the controller's store read back); a clean stop ends every object and leaves the outbox empty; records
kept across an agent SIGKILL are stored exactly once, also when they are all sent a second time to a
restarted controller (acks lost)."""
from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefleet.agent.outbox import Outbox
from edgefleet.common.records import CountRecord, ObjectEventRecord, SnapshotRecord, TrackedObject
from edgefleet.fleet.object_queries import CountQuery, ObjectQuery

from ..conftest import ROOT, ControllerThread, free_port
from .test_agent_e2e import agent_run, summary_of
from .test_metrics import scrape

CONFIG = """\
analytics:
  cam0:
    lines: {middle: {points: [[0.0, 0.6], [1.0, 0.6]], labels: [person]}}
"""


def start_agent(address: str, vtest: Path, tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG)
    log = (tmp_path / "agent.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(config), "--controller", address,
         "--source", str(vtest), "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
         "--name", "objects-cam", "--loop", "--threads", "1", "--metrics-listen", f"127.0.0.1:{port}", *extra],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)


def wait_for_objects(agent: subprocess.Popen, port: int, tmp_path: Path, snapshots: int = 2) -> dict[str, float]:
    """Scrape the agent's /metrics until it has ended objects with snapshots and counted a crossing."""
    samples: dict[str, float] = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert agent.poll() is None, f"agent exited:\n{(tmp_path / 'agent.log').read_text()[-3000:]}"
        try:
            samples = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet: the model loads first
        if total(samples, "edgefleet_agent_snapshots_total") >= snapshots and \
                total(samples, "edgefleet_agent_crossings_total") >= 1:
            return samples
        time.sleep(0.5)
    raise AssertionError(f"no snapshots or crossings in time: {objects_samples(samples)}")


def total(samples: dict[str, float], name: str, having: str = "") -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and having in k)


def objects_samples(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if "object" in k or "snapshot" in k or "crossings" in k}


def stored(ctl: ControllerThread, device: str) -> tuple[dict[str, TrackedObject], Counter]:
    """The controller's objects of `device` by id, and its count rows summed per (kind, name, label, direction)."""
    store = ctl.controller.store
    objects = {o.object_id: o for o in store.list_objects(ObjectQuery(device_ids=(device,), limit=1000))}
    counts: Counter = Counter()
    for row in store.count_objects(CountQuery(device_ids=(device,))):
        counts[(row.kind, row.name, row.label, row.direction)] += row.count
    return objects, counts


def jpeg_shape(data: bytes) -> tuple[int, ...]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image.shape


@pytest.mark.slow
@pytest.mark.data
def test_objects_counts_and_snapshots_reach_the_controller_and_a_clean_stop_ends_every_object(
        controller, vtest, tmp_path):
    port = free_port()
    agent = start_agent(controller.address, vtest, tmp_path, port)
    try:
        samples = wait_for_objects(agent, port, tmp_path)
        assert total(samples, "edgefleet_agent_object_events_total", 'type="new"') >= 2
    finally:
        agent.send_signal(signal.SIGTERM)  # a clean stop: every live object ends, the outbox drains
        out, _ = agent.communicate(timeout=90)
    log = (tmp_path / "agent.log").read_text()
    assert agent.returncode == 0, log[-3000:]
    summary = summary_of(subprocess.CompletedProcess([], 0, out, log))
    assert summary["outbox_left"] == 0
    box = Outbox(tmp_path / "agent" / "outbox.db")
    try:
        assert box.depth() == 0, "everything was acknowledged"
        last = box.last_sequence()
    finally:
        box.close()
    assert summary["acked_sequence"] == last > summary["frames"], "frames, objects, counts and snapshots share it"

    objects, counts = stored(controller, summary["device_id"])
    assert len(objects) >= 2
    assert all(o.ended for o in objects.values()), "a clean stop ends every object"
    assert all(o.stream_id == "cam0" and o.frames >= 3 and 0 < o.best_score <= 1 and 1 <= len(o.path) <= 32
               for o in objects.values())
    # every crossing is counted once in the count rows and once on the object that made it
    crossed = Counter(("line", line, o.label, direction)
                      for o in objects.values() for line, direction, _ in o.crossings)
    assert counts == crossed and sum(counts.values()) >= 1
    with_snapshots = [o for o in objects.values() if o.has_snapshot]
    assert len(with_snapshots) >= 2
    for obj in with_snapshots:
        crop = controller.controller.store.get_snapshot(obj.object_id, "crop", summary["device_id"])
        frame = controller.controller.store.get_snapshot(obj.object_id, "frame", summary["device_id"])
        assert max(jpeg_shape(crop.jpeg)[:2]) <= 320 and len(crop.jpeg) <= 100_000
        assert jpeg_shape(frame.jpeg)[:2] == (480, 640) and len(frame.jpeg) <= 100_000  # vtest is 768x576


@pytest.mark.slow
@pytest.mark.data
def test_records_kept_across_a_sigkill_are_stored_exactly_once_even_when_sent_twice(vtest, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # no controller yet: everything stays in the outbox
    state = tmp_path / "agent"
    port = free_port()
    agent = start_agent(address, vtest, tmp_path, port)
    try:
        wait_for_objects(agent, port, tmp_path)
        time.sleep(1.0)  # a few more commits (every 0.25 s) after the last object counted
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    box = Outbox(state / "outbox.db")
    try:
        kept = box.pending(limit=1_000_000)
    finally:
        box.close()
    expected_counts: Counter = Counter()
    newest: dict[str, ObjectEventRecord] = {}
    for rec in kept:
        if isinstance(rec, CountRecord):
            for row in rec.rows:
                expected_counts[(row.kind, row.name, row.label, row.direction)] += row.count
        elif isinstance(rec, ObjectEventRecord):
            newest[rec.object.object_id] = rec  # in sequence order: the last is the newest
    snapshots = [r for r in kept if isinstance(r, SnapshotRecord)]
    assert sum(expected_counts.values()) >= 1 and len(newest) >= 2 and len(snapshots) >= 4
    shutil.copy(state / "outbox.db", tmp_path / "kept-outbox.db")

    def check(ctl: ControllerThread, device: str) -> None:
        objects, counts = stored(ctl, device)
        assert counts == expected_counts
        assert set(objects) == set(newest)
        for object_id, event in newest.items():
            obj = objects[object_id]
            assert (obj.frames, obj.ended, obj.label, obj.zones) == (
                event.object.frames, event.object.ended, event.object.label, event.object.zones)
            assert obj.last_seen == pytest.approx(event.object.last_seen, abs=1e-6)
        for snap in snapshots:
            assert ctl.controller.store.get_snapshot(snap.object_id, snap.kind, device).jpeg == snap.jpeg

    ctl = ControllerThread(tmp_path / "fleet.db", listen=address)
    try:  # a run of one synthetic frame, no zones or lines (no objects, no counts of its own): it enrolls and delivers
        summary = summary_of(agent_run(address, "synthetic://320x240?objects=1", state, "--enroll-key", "efk_test",
                                       "--max-frames", "1"))
        assert summary["outbox_left"] == 0
        check(ctl, summary["device_id"])
    finally:
        ctl.stop()

    # The acks were lost (the rows as they were before; sequences, durable, are never reused): a restarted
    # controller gets everything again.
    shutil.copy(tmp_path / "kept-outbox.db", state / "outbox.db")
    for suffix in ("-wal", "-shm"):
        (state / f"outbox.db{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(state / "outbox.db") as conn:
        conn.execute("update sqlite_sequence set seq = ? where name = 'outbox'", (summary["acked_sequence"],))
    conn.close()
    ctl = ControllerThread(tmp_path / "fleet.db", listen=address, enroll_keys=())
    try:
        again = summary_of(agent_run(address, "synthetic://320x240?objects=1", state, "--max-frames", "1"))
        assert (again["device_id"], again["outbox_left"]) == (summary["device_id"], 0)
        check(ctl, summary["device_id"])
    finally:
        ctl.stop()
