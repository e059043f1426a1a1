"""Group commit (`fleet.ingest`) on a real SQLite file: what only SQLite can do (a trigger that fails the shared
transaction), the writer stopping and its callers going away, and a real controller's stream. What a group
answers and stores, on both backends: tests/contract/test_detections.py."""
from __future__ import annotations

import asyncio

import pytest

from edgefleet.common.records import FrameRecord, ObjectRecord
from edgefleet.fleet.detection_store import StoreResult
from edgefleet.fleet.errors import FailedPrecondition
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


def test_a_group_retried_batch_by_batch_adds_the_other_batches_counts_once(store):
    """A count row the shared transaction cannot write (a trigger) fails its batch alone; the other batches'
    counts, rolled back with the group and written again one batch at a time, are added once."""
    from edgefleet.common.records import CountRecord, CountRow
    from edgefleet.fleet.object_queries import CountQuery

    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store.db.execute("create trigger refuse before insert on object_counts when new.name = 'bad'"
                     " begin select raise(abort, 'refused by trigger'); end")

    def counts(seq: int, name: str, n: int) -> list:
        return [CountRecord([CountRow("cam0", 60_000, "line", name, "person", "in", n)], seq)]

    results, _ = run_writer(store, [(a, frames(1) + counts(2, "door", 3)), (b, counts(1, "bad", 5)),
                                    (a, counts(3, "door", 4))])
    assert results[0] == StoreResult(2, 2, 0) and results[2] == StoreResult(3, 1, 0)
    assert "refused by trigger" in str(results[1])
    assert [(r.device_id, r.name, r.count) for r in store.count_objects(CountQuery(by_device=True))] == [
        (a, "door", 7)]
    assert store.get_device(b).acked_sequence == 0


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
