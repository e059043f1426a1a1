"""Group commit (`fleet.ingest`) on a real SQLite file: one transaction, each caller its own result."""
from __future__ import annotations

import asyncio
import json
import math

import pytest

from edgefleet.common.records import FrameRecord, ObjectRecord, object_row
from edgefleet.fleet.detection_store import StoreResult
from edgefleet.fleet.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.fleet.ingest import IngestWriter
from edgefleet.fleet.server import AsyncStore
from edgefleet.fleet.store import FleetStore


@pytest.fixture
def store(tmp_path):
    s = FleetStore(tmp_path / "fleet.db")
    yield s
    s.close()


def enroll(store: FleetStore, hardware_id: str) -> str:
    key = store.create_enroll_key("t", "efk_test")
    device, _ = store.enroll(key, hardware_id, hardware_id, "0.1.0", {}, {})
    return device.device_id


def frames(*sequences: int, stream: str = "cam0", objects: int = 2) -> list[FrameRecord]:
    return [
        FrameRecord(stream, seq, seq - 1, 1000.0 + seq, [
            ObjectRecord(k + 1, k, "person", 0.8 + k / 100, (1.0 + k, 2.0, 30.5, 40.25)) for k in range(objects)
        ])
        for seq in sequences
    ]


def stored_sequences(store: FleetStore, device_id: str) -> list[int]:
    return [r[0] for r in store.db.execute(
        "select sequence from detections where device_id = ? order by sequence", [device_id])]


async def submit_all(writer: IngestWriter, batches: list[tuple[str, list[FrameRecord]]]) -> list:
    """Every batch queued before the writer wakes: they share one group."""
    return await asyncio.gather(*(writer.submit(d, f) for d, f in batches), return_exceptions=True)


def run_writer(store: FleetStore, batches: list[tuple[str, list[FrameRecord]]]) -> tuple[list, IngestWriter]:
    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        try:
            return await submit_all(db.ingest, batches), db.ingest
        finally:
            await db.ingest.stop()
            db._pool.shutdown(wait=True)

    return asyncio.run(main())


def test_many_devices_share_one_commit_and_each_gets_its_own_ack(store):
    a, b, c = (enroll(store, hw) for hw in ("hw-a", "hw-b", "hw-c"))
    results, writer = run_writer(store, [(a, frames(1, 2, 3)), (b, frames(1, 2)), (c, frames(5))])
    assert results == [StoreResult(3, 3, 0), StoreResult(2, 2, 0), StoreResult(5, 1, 0)]
    assert (writer.stats.groups, writer.stats.batches, writer.stats.frames) == (1, 3, 6)
    assert stored_sequences(store, a) == [1, 2, 3]
    assert (store.get_device(c).acked_sequence, store.get_device(c).detections_stored) == (5, 1)


def test_a_bad_batch_fails_its_caller_only(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    results, writer = run_writer(store, [
        (a, frames(1, 2)), ("no-such-device", frames(1)), (b, frames(0, 1)), (b, frames(2**63)), (b, frames(3)),
    ])
    assert results[0] == StoreResult(2, 2, 0)
    assert isinstance(results[1], NotFound) and "no-such-device" in str(results[1])
    assert isinstance(results[2], InvalidArgument) and "sequence" in str(results[2])
    assert isinstance(results[3], InvalidArgument) and "sequence" in str(results[3])
    assert results[4] == StoreResult(3, 1, 0)
    assert writer.stats.failed_batches == 3
    assert stored_sequences(store, a) == [1, 2]
    assert stored_sequences(store, b) == [3]


@pytest.mark.parametrize("batches, expected", [
    # a resend overlapping the batch before it, in the same group
    ([(1, 2, 3), (2, 3, 4)], [(3, 3, 0), (4, 1, 2)]),
    # a full replay, then new records
    ([(1, 2), (1, 2), (3,)], [(2, 2, 0), (2, 0, 2), (3, 1, 0)]),
    # an old replay after a newer batch: the ack never goes back
    ([(5, 6), (1, 2)], [(6, 2, 0), (6, 2, 0)]),
    # empty batches ack what is committed and store nothing
    ([(), (1,), ()], [(0, 0, 0), (1, 1, 0), (1, 0, 0)]),
    # a gap (logged) still acks the highest
    ([(1, 2), (4, 5)], [(2, 2, 0), (5, 2, 0)]),
    # a sequence twice in one batch is stored once
    ([(1, 1, 2)], [(2, 2, 1)]),
    # batches over one INSERT's 100 rows
    ([tuple(range(1, 251)), tuple(range(240, 262))], [(250, 250, 0), (261, 11, 11)]),
])
def test_one_group_answers_each_batch_as_one_transaction_per_batch_did(store, batches, expected):
    """(acked sequence, stored, duplicates) per batch, as `store_frames` answered batch by batch."""
    device = enroll(store, "hw-1")
    results, writer = run_writer(store, [(device, frames(*seqs)) for seqs in batches])
    assert [(r.acked_sequence, r.stored, r.duplicates) for r in results] == expected
    assert writer.stats.groups == 1
    assert stored_sequences(store, device) == sorted({s for seqs in batches for s in seqs})
    record = store.get_device(device)
    assert (record.acked_sequence, record.detections_stored) == (expected[-1][0], sum(e[1] for e in expected))


def test_store_frames_alone_still_answers_as_before(store):
    device = enroll(store, "hw-1")
    assert store.store_frames(device, frames(1, 2, 3)) == StoreResult(3, 3, 0)
    assert store.store_frames(device, frames(2, 3, 4)) == StoreResult(4, 1, 2)
    with pytest.raises(InvalidArgument):
        store.store_frames(device, frames(0))
    with pytest.raises(NotFound):
        store.store_frames("nope", frames(1))


def test_a_failing_shared_transaction_is_retried_batch_by_batch(store):
    """Something validation cannot see (here a trigger) fails the group; only its batch fails."""
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store.db.execute("create trigger refuse before insert on detections when new.stream_id = 'bad'"
                     " begin select raise(abort, 'refused by trigger'); end")
    results, _ = run_writer(store, [(a, frames(1, 2)), (b, frames(1, stream="bad")), (b, frames(2))])
    assert results[0] == StoreResult(2, 2, 0)
    assert "refused by trigger" in str(results[1])
    assert results[2] == StoreResult(2, 1, 0)
    assert stored_sequences(store, a) == [1, 2] and stored_sequences(store, b) == [2]


def test_load_forms_groups_and_loses_nothing(store):
    """Many streams publishing in turn, as PublishDetections does: groups grow, every record lands once."""
    devices = [enroll(store, f"hw-{i}") for i in range(40)]

    async def device(writer: IngestWriter, device_id: str) -> list[int]:
        acks = []
        for first in range(1, 41, 4):
            result = await writer.submit(device_id, frames(*range(first, first + 4)))
            acks.append(result.acked_sequence)
        return acks

    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        try:
            return await asyncio.gather(*(device(db.ingest, d) for d in devices)), db.ingest.stats
        finally:
            await db.ingest.stop()
            db._pool.shutdown(wait=True)

    acks, stats = asyncio.run(main())
    assert all(a == list(range(4, 41, 4)) for a in acks)
    assert stats.batches == 400 and stats.groups < 200
    assert store.db.execute("select count(*), count(distinct device_id) from detections").fetchone() == (1600, 40)
    assert {store.get_device(d).detections_stored for d in devices} == {40}


def test_stop_commits_what_is_queued_and_refuses_later_batches(store):
    a = enroll(store, "hw-a")

    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        pending = asyncio.ensure_future(db.ingest.submit(a, frames(1, 2)))
        await asyncio.sleep(0)  # queued, not yet committed
        await db.ingest.stop()
        with pytest.raises(FailedPrecondition):
            await db.ingest.submit(a, frames(3))
        db._pool.shutdown(wait=True)
        return await pending

    assert asyncio.run(main()) == StoreResult(2, 2, 0)
    assert stored_sequences(store, a) == [1, 2]


def test_a_caller_that_goes_away_does_not_disturb_the_others(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")

    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        gone = asyncio.ensure_future(db.ingest.submit(a, frames(1)))
        stays = asyncio.ensure_future(db.ingest.submit(b, frames(1)))
        await asyncio.sleep(0)
        gone.cancel()
        result = await stays
        await db.ingest.stop()
        db._pool.shutdown(wait=True)
        return result

    assert asyncio.run(main()) == StoreResult(1, 1, 0)
    assert stored_sequences(store, a) == [1]  # committed anyway; the device's replay is idempotent


@pytest.mark.parametrize("score, xyxy", [
    (0.8999999761581421, (10.004999, 20.125, 639.999, 0.0)),  # float32 values as the wire gives them
    (1e-7, (-0.001, -5.555, 1e6, 3.14159)),
    (float("nan"), (1.0, 2.0, 3.0, 4.0)),                       # non-finite: the json.dumps path
    (0.5, (float("inf"), 2.0, 3.0, 4.0)),
])
def test_objects_are_stored_as_the_same_values_as_before(store, score, xyxy):
    a = enroll(store, "hw-a")
    obj = ObjectRecord(7, 2, 'car "blue"', score, xyxy, predicted=True)
    store.store_frames(a, [FrameRecord("cam0", 1, 0, 1000.0, [obj])])
    (text,) = store.db.execute("select objects from detections").fetchone()
    stored, expected = json.loads(text), json.loads(json.dumps([object_row(obj)]))

    def same(x, y):
        return math.isnan(x) and math.isnan(y) if isinstance(x, float) and math.isnan(x) else x == y

    def flat(rows: list) -> list:
        return [v for row in rows for item in row for v in (item if isinstance(item, list) else [item])]

    assert all(same(x, y) for x, y in zip(flat(stored), flat(expected), strict=True))
    (frame,), _ = store.list_detections(a)
    assert frame.objects[0].label == 'car "blue"' and frame.objects[0].predicted


def test_a_pipelined_stream_is_acked_in_order_then_refused_at_a_bad_batch(tmp_path):
    """Through a real controller: batches written back to back are acked in order, each once
    committed; a batch naming another device ends the stream after the acks before it."""
    import grpc

    from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2
    from tests.conftest import ControllerThread

    def batch(*sequences: int, device_id: str = "") -> agent_pb2.DetectionBatch:
        return agent_pb2.DetectionBatch(frames=[
            types_pb2.FrameDetections(stream_id="cam0", sequence=s, frame_index=s, device_id=device_id,
                                      detections=[types_pb2.Detection(track_id=1, label="person", score=0.5)])
            for s in sequences
        ])

    ctl = ControllerThread(tmp_path / "fleet.db")
    try:
        with grpc.insecure_channel(ctl.address) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            device = stub.Enroll(agent_pb2.EnrollRequest(enroll_key="efk_test", hardware_id="hw-1"), timeout=5)
            requests = [batch(2 * k + 1, 2 * k + 2) for k in range(8)] + [batch(17), batch(18, device_id="other")]
            acks = []
            with pytest.raises(grpc.RpcError) as err:
                for ack in stub.PublishDetections(iter(requests), timeout=10,
                                                  metadata=(("authorization", f"Bearer {device.device_token}"),)):
                    acks.append((ack.acked_sequence, ack.duplicates))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert acks == [(2 * k + 2, 0) for k in range(8)] + [(17, 0)]
        assert stored_sequences(ctl.controller.store, device.device_id) == list(range(1, 18))
    finally:
        ctl.stop()
