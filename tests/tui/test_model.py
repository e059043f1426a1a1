"""The TUI's pure parts: coalescing, the fleet state, filter/sort, formatting, backoff, protobuf in,
the create-rollout form."""
from __future__ import annotations

import threading

import pytest

from edgefleet.tui.coalesce import MAX_UPDATES_PER_DEVICE, Coalescer
from edgefleet.tui.convert import device_from_pb, fleet_event_from_pb, rollout_from_pb, rollout_request_to_pb
from edgefleet.tui.feed import Backoff
from edgefleet.tui.format import age, banner_text, plan_text, progress_bar
from edgefleet.tui.rollout_form import FormError, parse_rollout_form
from edgefleet.tui.state import FleetState, matches, sort_key
from edgefleet.tui.views import (
    Connection,
    DeviceView,
    Dropped,
    EventEntry,
    Health,
    Plan,
    Removed,
    RolloutDeviceView,
    RolloutRequest,
    RolloutView,
)
from edgefleet.v1 import fleet_pb2, types_pb2


def device(device_id: str, status: str = "online", fps: float | None = None, t: float = 100.0,
           detections: int = 0, platform: str = "rpi5", temp: float | None = None) -> DeviceView:
    health = None if fps is None else Health(time=t, fps=fps, detections_total=detections, temperature_c=temp)
    return DeviceView(device_id=device_id, hostname=device_id.split("-")[0], status=status, last_seen=t,
                      platform=platform, health=health)


# ---- coalescing ----

def test_a_burst_becomes_one_batch_with_every_update_kept_per_device():
    sink = Coalescer()
    for i in range(5):
        sink.put(device("a", fps=i))
        sink.put(device("b", fps=10 + i))
    sink.put(EventEntry(1.0, "fleet", "a (a) connected"))
    batch = sink.drain()
    assert batch.items == 11
    assert [d.health.fps for d in batch.devices["a"]] == [0, 1, 2, 3, 4]
    assert [e.text for e in batch.events] == ["a (a) connected"]
    assert not sink.drain()  # drained: the next batch is empty


def test_updates_per_device_are_bounded_and_the_newest_win():
    sink = Coalescer()
    for i in range(MAX_UPDATES_PER_DEVICE + 5):
        sink.put(device("a", fps=i))
    updates = sink.drain().devices["a"]
    assert len(updates) == MAX_UPDATES_PER_DEVICE
    assert updates[-1].health.fps == MAX_UPDATES_PER_DEVICE + 4


@pytest.mark.parametrize(("items", "devices", "removed"), [
    ([device("a"), Removed("a")], set(), {"a"}),
    ([Removed("a"), device("a")], {"a"}, set()),
    ([device("a"), Removed("b")], {"a"}, {"b"}),
])
def test_removal_and_updates_in_one_batch(items, devices, removed):
    sink = Coalescer()
    sink.put_many(items)
    batch = sink.drain()
    assert (set(batch.devices), batch.removed) == (devices, removed)


def test_a_snapshot_replaces_pending_device_updates_but_keeps_later_ones():
    sink = Coalescer()
    sink.put(device("old"))
    sink.snapshot([device("a"), device("b")])
    sink.put(device("a", fps=3))
    batch = sink.drain()
    assert [d.device_id for d in batch.snapshot] == ["a", "b"]
    assert set(batch.devices) == {"a"}


def test_concurrent_producers_lose_nothing():
    sink = Coalescer()

    def produce(name: str) -> None:
        for i in range(2000):
            sink.put(device(f"{name}-{i % 50}", fps=i))

    threads = [threading.Thread(target=produce, args=(n,)) for n in "abcd"]
    for t in threads:
        t.start()
    drained = 0
    while any(t.is_alive() for t in threads):
        drained += sink.drain().items
    for t in threads:
        t.join()
    assert drained + sink.drain().items == 8000


# ---- state ----

def apply(state: FleetState, *items, snapshot=None):
    sink = Coalescer()
    if snapshot is not None:
        sink.snapshot(snapshot)
    sink.put_many(items)
    return state.apply(sink.drain())


def test_state_keeps_history_and_computes_detections_per_second():
    state = FleetState()
    apply(state, device("a", fps=10, t=100, detections=0), device("a", fps=12, t=101, detections=30))
    changes = apply(state, device("a", fps=11, t=103, detections=90))
    assert changes.devices == {"a"}
    assert list(state.history["a"].fps) == [10, 12, 11]
    assert state.detections_per_s("a") == pytest.approx(30.0)  # 60 in 2 s
    apply(state, device("a", fps=11, t=104, detections=5))  # the agent restarted: totals start over
    assert state.detections_per_s("a") is None


def test_the_same_health_twice_is_one_sample():
    state = FleetState()
    apply(state, device("a", fps=10), device("a", fps=10))
    assert list(state.history["a"].fps) == [10]


def test_a_snapshot_drops_devices_it_does_not_list():
    state = FleetState()
    apply(state, device("a", fps=1), device("b", fps=1))
    changes = apply(state, snapshot=[device("b")])
    assert changes.full and set(state.devices) == {"b"} and "a" not in state.history


def test_engine_history_records_each_engine_once_with_its_reason():
    def on(engine: str, reason: str, t: float, precision: str = "fp32") -> DeviceView:
        model, backend, sha = engine.split()
        return DeviceView("a", last_seen=t, plan=Plan(model=model, backend=backend, artifact_sha256=sha,
                                                      precision=precision, reason=reason))

    state = FleetState()
    apply(state, on("v3 onnxruntime 11", "cpu default", 1), on("v3 onnxruntime 11", "cpu default", 2),
          on("v3 onnxruntime 11", "thermal", 3, precision="fp16"),  # another plan, the same engine
          on("v8 onnxruntime 22", "rollout ro-1", 4))
    apply(state, on("v3 onnxruntime 11", "rollback: operator", 9))
    assert [(c.time, c.label, c.reason) for c in state.engines["a"]] == [
        (1, "v3 onnxruntime 11", "cpu default"), (4, "v8 onnxruntime 22", "rollout ro-1"),
        (9, "v3 onnxruntime 11", "rollback: operator")]
    apply(state, snapshot=[])
    assert "a" not in state.engines


def test_counts_events_rollouts_connection_and_dropped():
    state = FleetState()
    changes = apply(state, device("a"), device("b", "stale"), device("c", "offline"), device("d", "offline"),
                    EventEntry(1, "fleet", "x"), RolloutView("r1", state="running"), Dropped(7),
                    Connection("connected", "ctl:1"))
    assert state.counts() == {"online": 1, "stale": 1, "offline": 2}
    assert (changes.events, changes.rollouts, changes.connection) == (1, True, True)
    assert state.rollouts["r1"].state == "running" and state.server_dropped == 7
    assert state.new_events(0) == [EventEntry(1, "fleet", "x")]
    assert state.new_events(1) == []


def test_new_events_says_when_some_fell_off_the_log(monkeypatch):
    monkeypatch.setattr("edgefleet.tui.state.EVENT_LOG_SIZE", 3)
    state = FleetState()
    apply(state, *[EventEntry(i, "fleet", str(i)) for i in range(5)])
    assert [e.text for e in state.events] == ["2", "3", "4"]
    assert state.new_events(3) == [EventEntry(3, "fleet", "3"), EventEntry(4, "fleet", "4")]
    assert state.new_events(1) is None  # 4 missing, 3 kept: redraw in full


# ---- filter and sort ----

@pytest.mark.parametrize(("needle", "expected"), [
    ("", True), ("cam", True), ("CAM-A", True), ("rpi", True), ("online", True), ("jetson", False),
    ("stale", False),
])
def test_filter_is_a_case_insensitive_substring_over_name_platform_status(needle, expected):
    assert matches(device("cam-a1"), needle) is expected


def test_sort_by_a_health_column_puts_unknown_first_and_ties_break_on_id():
    state = FleetState()
    devices = [device("c", fps=5), device("a", fps=None), device("b", fps=5), device("d", fps=30)]
    assert [d.device_id for d in sorted(devices, key=sort_key("fps", state))] == ["a", "b", "c", "d"]
    ranked = [device("x", "online"), device("y", "offline"), device("z", "stale")]
    assert [d.device_id for d in sorted(ranked, key=sort_key("status", state))] == ["y", "z", "x"]


# ---- formatting ----

@pytest.mark.parametrize(("seconds", "text"), [
    (None, "never"), (-2, "0s"), (0.4, "0s"), (59.4, "59s"), (61, "1m"), (3599, "59m"), (3600, "1h"),
    (86400 * 3 + 5, "3d"),
])
def test_age(seconds, text):
    assert age(seconds) == text


@pytest.mark.parametrize(("plan", "text"), [
    (None, "—"),
    (Plan(model="yolov3-tiny-coco", precision="fp32", input_width=416, input_height=416, detect_interval=1),
     "yolov3-tiny-coco fp32 416×416 every frame"),
    (Plan(model="m", precision="int8", input_width=320, input_height=320, detect_interval=3), "m int8 320×320 1/3"),
    (Plan(backend="onnxruntime"), "?"),
])
def test_plan_text(plan, text):
    assert plan_text(plan) == text


@pytest.mark.parametrize(("connection", "text"), [
    (Connection("connected", "ctl:1"), ""),
    (Connection("connecting", "ctl:1"), "Connecting to the controller at ctl:1…"),
    (Connection("lost", "ctl:1", "unreachable (UNAVAILABLE: Connection refused)", 3, 104.2),
     "Controller ctl:1 unreachable (UNAVAILABLE: Connection refused) — retrying in 4s (attempt 3)"),
    (Connection("lost", "ctl:1", "refused the operator token (UNAUTHENTICATED)", 1, 100.5),
     "Controller ctl:1 refused the operator token (UNAUTHENTICATED) — retrying now (attempt 1)"),
])
def test_banner_text(connection, text):
    assert banner_text(connection, now=100.0) == text


def test_backoff_doubles_to_its_cap_and_resets():
    backoff = Backoff(initial_s=0.5, max_s=4, jitter=0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    backoff.reset()
    assert backoff.next() == 0.5
    jittery = Backoff(initial_s=1, max_s=1, jitter=0.2)
    assert all(0.8 <= jittery.next() <= 1.2 for _ in range(50))



# ---- protobuf in ----

def test_device_from_pb_keeps_unknown_as_none():
    bare = device_from_pb(fleet_pb2.Device(device_id="a", status=fleet_pb2.STALE))
    assert (bare.status, bare.health, bare.plan, bare.override, bare.last_seen) == ("stale", None, None, None, None)
    full = device_from_pb(fleet_pb2.Device(
        device_id="a", status=fleet_pb2.ONLINE, profile=types_pb2.HardwareProfile(platform="rpi5"),
        health=types_pb2.HealthSample(fps=12.5, temperature_c=0.0, outbox_depth=3),
        plan=types_pb2.RuntimePlan(model="m", input_width=320),
        plan_override=types_pb2.SetPlan(max_input_size=320)))
    assert (full.platform, full.health.fps, full.health.temperature_c, full.health.outbox_depth) == (
        "rpi5", 12.5, None, 3)
    assert full.plan.model == "m" and full.override.max_input_size == 320 and full.override.pinned is None


@pytest.mark.parametrize(("event", "expected"), [
    ({"message": "cam-a (cam-a-1f2e3d) connected"}, [EventEntry(5.0, "fleet", "cam-a (cam-a-1f2e3d) connected",
                                                                "cam-a-1f2e3d")]),
    ({"message": "cam-a enrolled as cam-a-1f2e3d"}, [EventEntry(5.0, "fleet", "cam-a enrolled as cam-a-1f2e3d",
                                                                "cam-a-1f2e3d")]),
    ({"removed_device_id": "gone", "dropped": 4}, [Removed("gone"), Dropped(4)]),
])
def test_fleet_event_from_pb(event, expected):
    pb = fleet_pb2.FleetEvent(**event)
    pb.time.FromSeconds(5)
    assert fleet_event_from_pb(pb) == expected


def test_a_rollout_state_newer_than_the_stubs_reads_unknown():
    rollout = rollout_from_pb(fleet_pb2.Rollout(rollout_id="r", state=42, waves=[fleet_pb2.Wave(state=2)]))
    assert (rollout.state, rollout.waves[0].state) == ("unknown", "running")


def test_rollout_devices_from_pb_say_skipped_and_pending():
    rollout = rollout_from_pb(fleet_pb2.Rollout(rollout_id="r", devices=[
        fleet_pb2.RolloutDevice(device_id="a", wave=0, state=types_pb2.DeploymentStatus.ACTIVE),
        fleet_pb2.RolloutDevice(device_id="b", wave=1),
        fleet_pb2.RolloutDevice(device_id="c", wave=1, state=types_pb2.DeploymentStatus.ROLLED_BACK, reason="gate"),
        fleet_pb2.RolloutDevice(device_id="d", wave=0, reason="skipped: no TensorRT on the device"),
    ], spec=fleet_pb2.CreateRolloutRequest(selector={"site": "lab"}, canary=1, waves_percent=[50, 100])))
    assert rollout.devices == (RolloutDeviceView("a", 0, "active"), RolloutDeviceView("b", 1, "pending"),
                               RolloutDeviceView("c", 1, "rolled_back", "gate"),
                               RolloutDeviceView("d", -1, "skipped", "no TensorRT on the device"))
    assert rollout.targets == 3 and rollout.spec.selector == (("site", "lab"),)
    assert rollout.spec.waves_percent == (50, 100)


@pytest.mark.parametrize(("succeeded", "failed", "target", "bar"), [
    (0, 0, 4, "░░░░░░░░"),
    (2, 0, 4, "████░░░░"),
    (2, 1, 4, "██████░░"),
    (4, 0, 4, "████████"),
    (0, 1, 100, "█░░░░░░░"),  # one failure among many still shows
    (0, 0, 0, "░░░░░░░░"),
])
def test_progress_bar(succeeded, failed, target, bar):
    assert progress_bar(succeeded, failed, target, width=8).plain == bar


# ---- the create-rollout form ----

SHA = "ab" * 32
GOOD = {"selector": "site=lab zone=dock", "canary": "2", "waves": "10, 50,100%", "gate_fps_ratio": "0.8",
        "max_failures": "1"}


def test_a_good_form_becomes_the_request_on_the_wire():
    request = parse_rollout_form(SHA, **GOOD)
    assert request == RolloutRequest(SHA, (("site", "lab"), ("zone", "dock")), 2, (10, 50, 100), 0.8, 1)
    pb = rollout_request_to_pb(request)
    assert (dict(pb.selector), pb.canary, list(pb.waves_percent), pb.max_failures) == (
        {"site": "lab", "zone": "dock"}, 2, [10, 50, 100], 1)
    assert parse_rollout_form(SHA, **{**GOOD, "selector": "  "}).selector == ()  # every device


@pytest.mark.parametrize(("field", "value", "message"), [
    ("selector", "site", "selector: 'site' is not KEY=VALUE"),
    ("selector", "site=a site=b", "selector: site is given twice"),
    ("canary", "0", "canary must be >= 1, got 0"),
    ("canary", "one", "canary: 'one' is not a whole number"),
    ("waves", "", "waves: give at least one percentage"),
    ("waves", "50,10,100", "must rise strictly within 1..100"),
    ("waves", "10,50", "the last wave must reach 100 %, got 50"),
    ("waves", "0,100", "must rise strictly within 1..100"),
    ("waves", "10;100", "is not a list of whole percentages"),
    ("gate_fps_ratio", "fast", "gate fps ratio: 'fast' is not a number"),
    ("gate_fps_ratio", "11", "gate fps ratio must be within 0..10"),
    ("gate_fps_ratio", "nan", "gate fps ratio must be within 0..10"),
    ("max_failures", "-1", "max failures must be >= 0, got -1"),
])
def test_a_bad_field_is_named(field, value, message):
    with pytest.raises(FormError) as err:
        parse_rollout_form(SHA, **{**GOOD, field: value})
    assert err.value.field == field and message in str(err.value)


def test_no_artifact_chosen_is_named():
    with pytest.raises(FormError) as err:
        parse_rollout_form(None, **GOOD)
    assert err.value.field == "artifact"
