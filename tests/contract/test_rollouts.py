"""Artifacts, rollouts, their devices and the event log, on both store backends."""
from __future__ import annotations

import threading

import pytest

from edgefleet.fleet.errors import InvalidArgument, NotFound
from edgefleet.fleet.rollout_store import (
    SKIPPED_WAVE,
    ArtifactRecord,
    DeployState,
    RolloutDeviceRecord,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
)

SHA_A, SHA_B = "a" * 64, "b" * 64


def artifact(sha256: str = SHA_A, name: str = "yolo", created: float = 100.0,
             signature: bytes = b"sig") -> ArtifactRecord:
    return ArtifactRecord(sha256, name, "onnx", 1234, b"\x00manifest\xff", signature, created)


def rollout(rollout_id: str, created: float, sha256: str = SHA_A, devices=(),
            state: RolloutState = RolloutState.RUNNING) -> RolloutRecord:
    spec = RolloutSpec({"site": "north"}, canary=1, waves_percent=(50, 100), select="gpu=true", on_failure="halt")
    return RolloutRecord(rollout_id, sha256, state, spec, 0, created, created, devices=list(devices))


def stored(store, *rollouts: RolloutRecord) -> list[RolloutRecord]:
    """The rollouts inserted (their artifacts added first)."""
    for sha256 in dict.fromkeys(r.artifact_sha256 for r in rollouts):
        store.add_artifact(artifact(sha256))
    return [store.insert_rollout(r) for r in rollouts]


# ---- artifacts ----

def test_an_artifact_pushed_twice_keeps_its_first_record(store):
    first = artifact(signature=b"first")
    assert store.add_artifact(first) == first
    assert store.add_artifact(artifact(name="again", created=200.0, signature=b"second")) == first
    assert store.find_artifact(SHA_A) == first
    assert store.get_artifact(SHA_A) == first
    assert store.list_artifacts() == [first]


def test_an_unknown_artifact_is_none_or_not_found(store):
    assert store.find_artifact(SHA_B) is None
    with pytest.raises(NotFound, match=f"no artifact with sha256 '{SHA_B}' \\(edgefleet artifact list\\)"):
        store.get_artifact(SHA_B)


def test_artifacts_are_listed_oldest_first(store):
    newer, older = artifact(SHA_A, created=300.0), artifact(SHA_B, created=100.0)
    store.add_artifact(newer)
    store.add_artifact(older)
    assert store.list_artifacts() == [older, newer]


def test_a_device_fetches_only_artifacts_a_rollout_sent_it(store):
    stored(store, rollout("ro-1", 1.0, SHA_A, [RolloutDeviceRecord("dev-1", 0),
                                              RolloutDeviceRecord("dev-skipped", SKIPPED_WAVE, reason="skipped")]))
    store.add_artifact(artifact(SHA_B))
    assert store.device_may_fetch("dev-1", SHA_A)
    assert not store.device_may_fetch("dev-1", SHA_B)
    assert not store.device_may_fetch("dev-skipped", SHA_A)
    assert not store.device_may_fetch("dev-other", SHA_A)


# ---- rollouts ----

def test_a_rollout_reads_back_as_inserted_with_its_devices_in_wave_order(store):
    canary = RolloutDeviceRecord("z-canary", 0, DeployState.ACTIVE, "", {"fps_ratio": 0.95}, 6.0)
    devices = [RolloutDeviceRecord("dev-b", 1, updated=5.0), RolloutDeviceRecord("skipped", SKIPPED_WAVE,
                                                                                  reason="no gpu"),
               RolloutDeviceRecord("dev_c", 1, updated=5.0), RolloutDeviceRecord("Dev-a", 1, updated=5.0), canary]
    [got] = stored(store, rollout("ro-1", 10.0, devices=devices))
    assert got.spec == RolloutSpec({"site": "north"}, canary=1, waves_percent=(50, 100), select="gpu=true",
                                   on_failure="halt")
    assert (got.rollout_id, got.artifact_sha256, got.state, got.wave, got.created, got.updated, got.reason) == (
        "ro-1", SHA_A, RolloutState.RUNNING, 0, 10.0, 10.0, "")
    # the canary wave first, then by wave and device id in byte order, skipped devices last
    assert [d.device_id for d in got.devices] == ["z-canary", "Dev-a", "dev-b", "dev_c", "skipped"]
    assert got.device("z-canary") == canary
    skipped = got.device("skipped")
    assert skipped is not None and skipped.reason == "no gpu" and skipped.updated > 1e9  # stamped when written
    assert store.get_rollout("ro-1") == got


def test_an_unknown_rollout_is_not_found(store):
    with pytest.raises(NotFound, match="no rollout 'ro-x' \\(edgefleet rollout list\\)"):
        store.get_rollout("ro-x")


def test_update_rollout_changes_only_what_it_is_given(store):
    stored(store, rollout("ro-1", 10.0))
    paused = store.update_rollout("ro-1", state=RolloutState.PAUSED)
    assert (paused.state, paused.wave, paused.reason) == (RolloutState.PAUSED, 0, "")
    assert paused.updated > 10.0
    moved = store.update_rollout("ro-1", wave=2, reason="wave 1 passed")
    assert (moved.state, moved.wave, moved.reason) == (RolloutState.PAUSED, 2, "wave 1 passed")
    assert store.get_rollout("ro-1") == moved


def test_update_rollout_device_replaces_or_adds_a_device(store):
    stored(store, rollout("ro-1", 10.0, devices=[RolloutDeviceRecord("dev-1", 0, updated=5.0)]))
    store.update_rollout_device("ro-1", RolloutDeviceRecord("dev-1", 0, DeployState.FAILED, "gate failed",
                                                             {"agreement": 0.5}, 7.0))
    store.update_rollout_device("ro-1", RolloutDeviceRecord("dev-2", 1, DeployState.DOWNLOADING, updated=8.0))
    assert store.get_rollout("ro-1").devices == [
        RolloutDeviceRecord("dev-1", 0, DeployState.FAILED, "gate failed", {"agreement": 0.5}, 7.0),
        RolloutDeviceRecord("dev-2", 1, DeployState.DOWNLOADING, "", {}, 8.0)]


def test_a_rollout_is_found_by_its_id_or_a_unique_prefix(store):
    stored(store, rollout("ro-abc1", 1.0), rollout("ro-abc2", 2.0), rollout("ro-abcd", 3.0), rollout("ro_x", 4.0))
    assert store.find_rollout("ro-abc1").rollout_id == "ro-abc1"
    assert store.find_rollout("ro-abc2").rollout_id == "ro-abc2"
    assert store.find_rollout("ro-abcd").rollout_id == "ro-abcd"
    assert store.find_rollout("ro_").rollout_id == "ro_x"  # _ is a character here, not a wildcard
    assert store.find_rollout("RO-ABCD").rollout_id == "ro-abcd"  # a prefix matches either case
    with pytest.raises(InvalidArgument, match="'ro-abc' is ambiguous: it matches ro-abcd, ro-abc2, ro-abc1; give more"):
        store.find_rollout("ro-abc")
    with pytest.raises(NotFound, match="no rollout 'ro-z' \\(edgefleet rollout list shows them\\)"):
        store.find_rollout("ro-z")
    with pytest.raises(NotFound, match="no rollout '%'"):
        store.find_rollout("%")
    with pytest.raises(NotFound, match="no rollout ''"):
        store.find_rollout("")


def test_an_ambiguous_prefix_names_five_rollouts_at_most(store):
    stored(store, *(rollout(f"ro-{i}", float(i)) for i in range(7)))
    with pytest.raises(InvalidArgument, match="it matches ro-6, ro-5, ro-4, ro-3, ro-2, …; give more"):
        store.find_rollout("ro-")


def test_rollouts_are_listed_newest_first_and_counted_by_state(store):
    stored(store, rollout("ro-old", 1.0, state=RolloutState.SUCCEEDED), rollout("ro-new", 3.0),
           rollout("ro-mid", 2.0, state=RolloutState.PAUSED))
    assert [r.rollout_id for r in store.list_rollouts()] == ["ro-new", "ro-mid", "ro-old"]
    in_flight = store.list_rollouts((RolloutState.RUNNING, RolloutState.PAUSED))
    assert [r.rollout_id for r in in_flight] == ["ro-new", "ro-mid"]
    assert in_flight[0] == store.get_rollout("ro-new")
    assert store.list_rollouts((RolloutState.ABORTED,)) == []
    assert store.rollout_counts() == {RolloutState.SUCCEEDED: 1, RolloutState.RUNNING: 1, RolloutState.PAUSED: 1}


def test_rollouts_of_a_device_are_those_it_is_in_oldest_first(store):
    stored(store,
           rollout("ro-2", 2.0, devices=[RolloutDeviceRecord("dev-1", 0), RolloutDeviceRecord("dev-2", 1)]),
           rollout("ro-1", 1.0, devices=[RolloutDeviceRecord("dev-1", 1)]),
           rollout("ro-3", 3.0, devices=[RolloutDeviceRecord("dev-2", 0)]),
           rollout("ro-done", 0.5, devices=[RolloutDeviceRecord("dev-1", 0)], state=RolloutState.FAILED))
    running = (RolloutState.RUNNING, RolloutState.PAUSED)
    assert [r.rollout_id for r in store.rollouts_of_device("dev-1", running)] == ["ro-1", "ro-2"]
    assert [r.rollout_id for r in store.rollouts_of_device("dev-1", tuple(RolloutState))] == ["ro-done", "ro-1", "ro-2"]
    assert store.rollouts_of_device("dev-2", running)[1] == store.get_rollout("ro-3")
    assert store.rollouts_of_device("dev-9", running) == []


def test_rollouts_and_artifacts_outlive_the_store(store_factory):
    first = store_factory()
    [inserted] = stored(first, rollout("ro-1", 1.0, devices=[RolloutDeviceRecord("dev-1", 0, updated=2.0)]))
    again = store_factory()
    assert again.get_rollout("ro-1") == inserted
    assert again.list_artifacts() == [artifact()]


# ---- events ----

def test_events_read_back_oldest_first_filtered_and_limited_to_the_newest(store):
    added = [store.add_event("rollout", "started", rollout_id="ro-1", when=1.0),
             store.add_event("device", "revoked", device_id="dev-1", when=2.0),
             store.add_event("rollout", "dev-1 active", device_id="dev-1", rollout_id="ro-1", when=3.0),
             store.add_event("artifact", "stored", when=4.0)]
    assert [e.id for e in added] == sorted({e.id for e in added})
    assert added[3].device_id == added[3].rollout_id == ""
    assert store.list_events() == added
    assert store.list_events(rollout_id="ro-1") == [added[0], added[2]]
    assert store.list_events(device_id="dev-1") == [added[1], added[2]]
    assert store.list_events(rollout_id="ro-1", device_id="dev-1") == [added[2]]
    assert store.list_events(limit=2) == added[2:]
    assert store.list_events(limit=0) == []
    assert store.list_events(limit=-1) == added


def test_an_event_is_stamped_now_unless_given_a_time(store):
    event = store.add_event("config", "desired version 2")
    assert event.time > 1e9
    assert store.list_events() == [event]


# ---- PostgreSQL: several replicas on one database ----

def test_two_replicas_adding_one_artifact_at_once_keep_one_record(pg_url):
    from edgefleet.fleet.pg.store import PgStore

    replicas = [PgStore(pg_url), PgStore(pg_url)]
    try:
        for attempt in range(20):
            sha256 = f"{attempt:064x}"
            records = [artifact(sha256, name=f"from-{i}", signature=bytes([i])) for i in range(2)]
            answers: list[ArtifactRecord] = []
            start = threading.Barrier(2)

            def add(store, record, start=start, answers=answers):
                start.wait()
                answers.append(store.add_artifact(record))

            threads = [threading.Thread(target=add, args=pair) for pair in zip(replicas, records)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert answers[0] == answers[1] in records  # both replicas answer with the one record kept
            assert replicas[0].list_artifacts()[-1] == answers[0]
        assert len(replicas[1].list_artifacts()) == 20
    finally:
        for replica in replicas:
            replica.close()


def test_devices_are_ordered_by_bytes_whatever_the_database_collation(pg_url):
    from edgefleet.fleet.pg.store import PgStore

    store = PgStore(pg_url)
    try:
        # ICU's root collation sorts 'dev-b' before 'Dev-c' and ignores '-' against '_' at first
        store._execute('alter table rollout_devices alter column device_id type text collate "und-x-icu"')
        ids = ["dev_a", "dev-b", "Dev-c", "dev-a"]
        stored(store, rollout("ro-1", 1.0, devices=[RolloutDeviceRecord(i, 1) for i in ids]))
        assert [d.device_id for d in store.get_rollout("ro-1").devices] == sorted(ids)
        assert sorted(ids) != [r["device_id"] for r in store._rows("select device_id from rollout_devices"
                                                                    " order by device_id")]
    finally:
        store.close()
