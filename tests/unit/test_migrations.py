"""Schema steps are atomic: a step that fails half-way leaves the file as it was, and the next start works."""
from __future__ import annotations

import sqlite3

import pytest

from edgefleet.fleet import schema
from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.object_queries import ObjectQuery
from edgefleet.fleet.store import SCHEMA_VERSION, FleetStore
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import ControllerThread

V2_TABLES = {"enroll_keys", "devices", "detections", "operator_tokens"}


def layout(path) -> tuple[int, set[str], set[str]]:
    """(user_version, tables, columns of devices) as another process would read them."""
    conn = sqlite3.connect(str(path))
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
        columns = {row[1] for row in conn.execute("pragma table_info(devices)")}
        return version, tables, columns
    finally:
        conn.close()


def failing_in_the_middle(step: schema.Step) -> schema.Step:
    """The step with a statement that fails after some of its tables were created."""
    middle = len(step.statements) // 2
    return schema.Step(step.summary, (*step.statements[:middle], "insert into no_such_table values (1)",
                                      *step.statements[middle:]))


def test_a_step_that_fails_half_way_changes_nothing_and_the_next_start_completes_it(tmp_path, monkeypatch):
    path = tmp_path / "fleet.db"
    steps = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", steps[:2])
    FleetStore(path).close()
    before = layout(path)
    assert before[:2] == (2, V2_TABLES)

    monkeypatch.setattr(schema, "MIGRATIONS", (*steps[:2], failing_in_the_middle(steps[2]), *steps[3:]))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        FleetStore(path)
    assert layout(path) == before  # not "health_samples" without "events", nor a half-read version

    monkeypatch.undo()
    store = FleetStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert {"health_samples", "artifacts", "rollouts", "rollout_devices", "events"} <= set(store.db.table_names())
    finally:
        store.close()
    controller = ControllerThread(path)
    try:
        with open_channel(controller.address, token=controller.operator_token) as channel:
            stub = fleet_pb2_grpc.FleetControlStub(channel)
            assert list(stub.ListDevices(fleet_pb2.ListDevicesRequest()).devices) == []
    finally:
        controller.stop()


def test_a_first_step_that_fails_leaves_an_empty_file_at_version_0(tmp_path, monkeypatch):
    path = tmp_path / "fleet.db"
    monkeypatch.setattr(schema, "MIGRATIONS", (failing_in_the_middle(schema.MIGRATIONS[0]), *schema.MIGRATIONS[1:]))
    with pytest.raises(sqlite3.OperationalError):
        FleetStore(path)
    assert layout(path) == (0, set(), set())
    monkeypatch.undo()
    FleetStore(path).close()
    assert layout(path)[:2] == (SCHEMA_VERSION, V2_TABLES | {"health_samples", "artifacts", "rollouts",
                                                            "rollout_devices", "events", "desired_configs", "audit",
                                                            "objects", "object_counts", "snapshots",
                                                            "object_snapshots"})


def test_a_database_newer_than_the_controller_is_refused_untouched(tmp_path):
    path = tmp_path / "fleet.db"
    FleetStore(path).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        FleetStore(path)
    assert layout(path)[0] == SCHEMA_VERSION + 1


def test_a_v4_file_with_frames_gains_the_object_tables_and_keeps_its_frames(tmp_path, monkeypatch):
    """The objects step on a file that holds data: a failure half-way leaves it at v4 with its frames; the next
    start adds the tables, and the frames are still there."""
    from edgefleet.common.records import ObjectEventRecord, TrackedObject

    path = tmp_path / "fleet.db"
    steps = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", steps[:4])
    store = FleetStore(path)
    key = store.create_enroll_key("t")
    device, _ = store.enroll(key, "hw-1", "cam", "0.1.0", {}, {})
    for sequence in (1, 2):  # as the v4 code stored them (today's also counts records_stored, a v5 column)
        store.db.execute("insert into detections values (?, ?, 'cam0', ?, ?, ?, 0, '[]')",
                         [device.device_id, sequence, sequence - 1, 999.0 + sequence, 1002.0])
    store.db.execute("update devices set acked_sequence = 2, detections_stored = 2")
    store.close()

    monkeypatch.setattr(schema, "MIGRATIONS", (*steps[:4], failing_in_the_middle(steps[4])))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        FleetStore(path)
    version, tables, _ = layout(path)
    assert version == 4 and not tables & {"objects", "object_counts", "snapshots", "object_snapshots"}

    monkeypatch.undo()
    store = FleetStore(path)
    try:
        assert store.list_detections(device.device_id)[1] == 2
        obj = TrackedObject("o-1", "cam0", 1, "person", 0, 1000.0, 1001.0, 0.9, (1.0, 2.0, 3.0, 4.0))
        assert store.store_frames(device.device_id, [ObjectEventRecord("new", obj, 3)]).acked_sequence == 3
        assert store.db.execute("select records_stored from devices").fetchone()[0] == 1
        assert [o.object_id for o in store.list_objects(ObjectQuery())] == ["o-1"]
    finally:
        store.close()
