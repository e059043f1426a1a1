"""Retention in a real controller: the sweeper task, heartbeats into health history, the serve flags."""
from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.detection_store import FrameRecord, ObjectRecord
from edgefleet.fleet.retention import RetentionPolicy, RetentionSweeper
from edgefleet.fleet.server import AsyncStore
from edgefleet.fleet.store import FleetStore
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2
from tests.conftest import ControllerThread, run_cli, wait_for

DAY = 86_400


def test_the_controller_sweeps_old_detections_soon_after_start(tmp_path):
    db = tmp_path / "fleet.db"
    store = FleetStore(db)
    device, _ = store.enroll(store.create_enroll_key("t"), "hw-1", "cam", "v", {}, {})
    frames = [FrameRecord("cam0", s, s, 1000.0 + s, [ObjectRecord(1, 0, "person", 0.9, (0, 0, 1, 1))])
              for s in range(1, 31)]
    store.store_frames(device.device_id, frames)
    store.db.execute("update detections set received = ? where sequence <= 25", [time.time() - 40 * DAY])
    store.close()

    ctl = ControllerThread(db, retention=RetentionPolicy(detections_days=30, chunk_rows=7), retention_every_s=0.2)
    try:
        sweeper = ctl.controller.retention
        wait_for(lambda: sweeper.sweeps >= 2, timeout=10, what="two retention sweeps")
        with open_channel(ctl.address, token=ctl.operator_token) as channel:
            stored = fleet_pb2_grpc.FleetControlStub(channel).ListDetections(
                fleet_pb2.ListDetectionsRequest(device_id=device.device_id, limit=100), timeout=5
            )
        assert [f.sequence for f in stored.frames] == [26, 27, 28, 29, 30] and stored.total == 5
        assert sweeper.last.detections == 0  # the first sweep took them, 7 at a time
    finally:
        started = time.monotonic()
        ctl.stop()
    assert time.monotonic() - started < 5


def test_a_heartbeat_lands_in_the_health_history(controller):
    with grpc.insecure_channel(controller.address) as channel:
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        device = stub.Enroll(agent_pb2.EnrollRequest(enroll_key="efk_test", hardware_id="hw-1", hostname="cam"),
                             timeout=5)
        messages = [
            agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="1", streams=["cam0"])),
            agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=1, health=types_pb2.HealthSample(
                fps=12.5, cpu_percent=40, frames_dropped=3, outbox_depth=17))),
        ]
        list(stub.Session(iter(messages), metadata=(("authorization", f"Bearer {device.device_token}"),), timeout=5))
    now = time.time()
    (row,) = controller.run(controller.controller.db.health_history(device.device_id, now - 60, now + 1))
    assert (row["resolution_s"], row["fps"], row["cpu_percent"], row["frames_dropped"], row["outbox_depth"]) == (
        0, 12.5, 40.0, 3, 17)


def test_serve_refuses_a_bad_retention_naming_the_flag(tmp_path):
    proc = run_cli("edgefleet.fleet.cli", "serve", "--db", str(tmp_path / "fleet.db"), "--health-retention-days", "-3")
    assert proc.returncode == 2
    assert "--health-retention-days must be a number of days >= 0" in proc.stderr and "Traceback" not in proc.stderr


def test_the_controller_sweeps_objects_counts_and_snapshots_each_after_its_own_days(tmp_path):
    from edgefleet.common.records import CountRecord, CountRow, ObjectEventRecord, SnapshotRecord, TrackedObject
    from edgefleet.fleet.object_queries import CountQuery, ObjectQuery

    db = tmp_path / "fleet.db"
    store = FleetStore(db)
    device, _ = store.enroll(store.create_enroll_key("t"), "hw-1", "cam", "v", {}, {})
    now = time.time()
    minute = int(now // 60) * 60

    def obj(object_id: str, days_ago: float) -> TrackedObject:
        seen = now - days_ago * DAY
        return TrackedObject(object_id, "cam0", 1, "person", 0, seen, seen, 0.9, (0.0, 0.0, 1.0, 1.0))

    store.store_frames(device.device_id, [
        FrameRecord("cam0", 1, 0, now - 50 * DAY),
        ObjectEventRecord("end", obj("old", 400), 2), ObjectEventRecord("end", obj("month", 40), 3),
        ObjectEventRecord("new", obj("new", 0), 4),
        CountRecord([CountRow("cam0", minute - 400 * DAY, "line", "door", "person", "in", 5),
                     CountRow("cam0", minute - 40 * DAY, "line", "door", "person", "in", 7)], 5),
        SnapshotRecord("cam0", "month", "crop", "person", now - 40 * DAY, b"\xff\xd8month", 0.9, 6),
        SnapshotRecord("cam0", "new", "crop", "person", now, b"\xff\xd8new", 0.9, 7),
    ])
    store.close()

    policy = RetentionPolicy(detections_days=30, objects_days=365, snapshots_days=30, chunk_rows=1)
    ctl = ControllerThread(db, retention=policy, retention_every_s=0.2)
    try:
        sweeper = ctl.controller.retention
        wait_for(lambda: sweeper.sweeps >= 1, timeout=10, what="a retention sweep")
        db_ = ctl.controller.db
        assert [o.object_id for o in ctl.run(db_.list_objects(ObjectQuery()))] == ["new", "month"]
        assert [r.count for r in ctl.run(db_.count_objects(CountQuery()))] == [7]
        assert ctl.run(db_.get_snapshot("new")).jpeg == b"\xff\xd8new"
        with pytest.raises(Exception, match="no 'crop' snapshot"):
            ctl.run(db_.get_snapshot("month"))
    finally:
        ctl.stop()


def test_serve_takes_the_frames_and_objects_flags_and_refuses_bad_ones(tmp_path):
    for flag, value, says in [("--store-frames", "sample:0", "expected all, none or sample:N"),
                              ("--store-frames", "most", "'most'"),
                              ("--objects-retention-days", "x", "--objects-retention-days must be a number of days"),
                              ("--snapshot-retention-days", "-1", "--snapshot-retention-days must be a number")]:
        proc = run_cli("edgefleet.fleet.cli", "serve", "--db", str(tmp_path / "fleet.db"), flag, value)
        assert proc.returncode == 2, (flag, value)
        assert says in proc.stderr and flag in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_deleting_a_million_old_detections_never_holds_the_store_long(tmp_path):
    """Prints the numbers the retention issue asked for: total time, chunks, longest chunk, and the
    worst wait of a heartbeat sent every 10 ms while the sweep runs (`pytest -s -m slow -k million`)."""
    store = FleetStore(tmp_path / "fleet.db")
    key = store.create_enroll_key("t")
    devices = [store.enroll(key, f"hw-{i}", f"cam{i}", "v", {}, {})[0].device_id for i in range(10)]
    objects = json.dumps([[1, 0, "person", 0.9, [10.0, 20.0, 110.0, 220.0], 0],
                          [2, 2, "car", 0.8, [300.0, 40.0, 500.0, 200.0], 0]])
    old, recent, now = 1_000_000, 100_000, time.time()
    per_device = (old + recent) // len(devices)
    conn = store.db.conn
    conn.execute("begin")
    for device_id in devices:
        conn.executemany("insert into detections values (?, ?, 'cam0', ?, ?, ?, 2, ?)", [
            (device_id, s, s, now - 40 * DAY, now - 40 * DAY + s if s <= old // len(devices) else now, objects)
            for s in range(1, per_device + 1)
        ])
        conn.execute("update devices set detections_stored = ? where device_id = ?", [per_device, device_id])
    conn.execute("commit")
    db = AsyncStore(store)
    sweeper = RetentionSweeper(db, RetentionPolicy(detections_days=30))

    async def sweep_while_heartbeating():
        waits = []
        sweep = asyncio.create_task(sweeper.sweep(now=now))
        while not sweep.done():
            started = time.monotonic()
            await db.record_heartbeat(devices[0], {"fps": 10.0}, None)
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.01)
        return await sweep, max(waits), len(waits)

    try:
        report, worst_wait, heartbeats = asyncio.run(sweep_while_heartbeating())
        counters = sum(store.get_device(d).detections_stored for d in devices)
    finally:
        db.close()
    print(f"\ndeleted {report.detections} of {old + recent} detections in {report.chunks} chunks of 10,000:"
          f" {report.seconds:.2f} s, longest chunk {report.longest_chunk_s * 1000:.0f} ms;"
          f" {heartbeats} heartbeats meanwhile, the slowest waited {worst_wait * 1000:.0f} ms")
    assert (report.detections, counters) == (old, recent)
    assert report.longest_chunk_s < 1.0 and worst_wait < 1.0
