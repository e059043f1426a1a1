"""TrackEvents: a stream's tracked objects -> Frigate-style new/update/end events; the bridge's parsing."""
from __future__ import annotations

import json

import pytest

from edgefleet.agent.mqtt import TrackEvents, TrackEventsConfig
from edgefleet.agent.outbox import OutboxObject
from edgefleet.common.addresses import parse_host_port
from edgefleet.fleet.mqtt_bridge import MalformedMessage, MqttBridge, parse_event, parse_health

BOX = (100.0, 100.0, 200.0, 300.0)


def obj(track_id: int = 1, label: str = "person", score: float = 0.8, xyxy=BOX, predicted=False) -> OutboxObject:
    return OutboxObject(track_id, 0, label, score, tuple(xyxy), predicted)


def shifted(dx: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = BOX
    return (x1 + dx, y1, x2 + dx, y2)


def run(frames: list[list[OutboxObject]], fps: float = 10.0, **config) -> list[tuple[str, int]]:
    events = TrackEvents("cam0", TrackEventsConfig(**config), device_id="dev-1")
    out = []
    for i, objects in enumerate(frames):
        out += [(e["type"], e["after"]["track_id"]) for e in events.step(objects, 1000.0 + i / fps)]
    return out


@pytest.mark.parametrize("frames, config, expected", [
    pytest.param([[obj()]], {}, [("new", 1)], id="first sight is new"),
    pytest.param([[obj()]] * 20, {}, [("new", 1)], id="a still track sends nothing more"),
    pytest.param([[obj()], [], [], []], {"end_after_frames": 3}, [("new", 1), ("end", 1)], id="gone N frames ends"),
    pytest.param([[obj()], [], [obj()], [], []], {"end_after_frames": 3}, [("new", 1)],
                 id="a short gap does not end it"),
    pytest.param([[obj()], [obj(xyxy=shifted(50))]], {"update_every_s": 1.0}, [("new", 1)],
                 id="a move within the throttle waits"),
    pytest.param([[obj()]] + [[obj(xyxy=shifted(50))]] * 12, {"update_every_s": 1.0}, [("new", 1), ("update", 1)],
                 id="a move is sent once the throttle allows"),
    pytest.param([[obj()]] + [[obj(xyxy=shifted(2))]] * 12, {"update_every_s": 0.5}, [("new", 1)],
                 id="jitter below min_box_shift is no update"),
    pytest.param([[obj()]] + [[obj(score=0.95)]] * 12, {"update_every_s": 0.5}, [("new", 1), ("update", 1)],
                 id="a score change updates"),
    pytest.param([[obj()], [obj(label="car")]], {"update_every_s": 10}, [("new", 1), ("update", 1)],
                 id="a new label updates at once"),
    pytest.param([[obj(1), obj(2)], [obj(2)], [obj(2)]], {"end_after_frames": 2},
                 [("new", 1), ("new", 2), ("end", 1)], id="tracks live and end independently"),
])
def test_events(frames, config, expected):
    assert run(frames, **config) == expected


def test_payload_is_frigate_shaped():
    events = TrackEvents("cam0", TrackEventsConfig(end_after_frames=1, update_every_s=0), device_id="dev-1")
    (new,) = events.step([obj(7, score=0.6)], 10.0)
    assert new["type"] == "new" and new["before"] == new["after"]
    after = new["after"]
    assert after["id"] == "10.000000-cam0-7" and after["track_id"] == 7
    assert (after["device"], after["stream"], after["label"], after["score"]) == ("dev-1", "cam0", "person", 0.6)
    assert after["box"] == list(BOX) and after["active"] and after["end_time"] is None
    (update,) = events.step([obj(7, score=0.9, xyxy=shifted(30))], 11.0)
    assert update["before"]["score"] == 0.6 and update["after"]["score"] == 0.9
    assert update["after"]["top_score"] == 0.9 and update["after"]["id"] == after["id"]
    (end,) = events.step([], 12.0)
    assert end["type"] == "end" and end["after"]["end_time"] == 12.0 and not end["after"]["active"]
    assert end["before"] == update["after"]
    json.dumps(end)  # what goes on the wire


def test_counts_follow_active_tracks_and_end_all_ends_them():
    events = TrackEvents("cam0", TrackEventsConfig(end_after_frames=2))
    events.step([obj(1), obj(2), obj(3, label="car")], 0.0)
    assert events.counts() == {"person": 2, "car": 1}
    events.step([obj(1)], 0.1)
    assert events.counts() == {"person": 2, "car": 1}, "a track counts until it ends"
    events.step([obj(1)], 0.2)
    assert events.counts() == {"person": 1}
    assert [e["type"] for e in events.end_all(0.3)] == ["end"]
    assert events.counts() == {}


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:1883", ("127.0.0.1", 1883)),
    ("broker:8883", ("broker", 8883)),
])
def test_parse_host_port(value, expected):
    assert parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["1883", ":1883", "host:", "host:0", "host:70000", "host:abc"])
def test_parse_host_port_refuses(value):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port(value)


# ---- the bridge's edge validation ----

def test_parse_health_keeps_known_fields():
    health = parse_health(json.dumps({"fps": 12.5, "frames_total": 40, "rung": {"x": 1},
                                      "streams": [{"stream_id": "cam0", "frames": 40, "extra": 1}]}).encode())
    assert health == {"fps": 12.5, "frames_total": 40, "streams": [{"stream_id": "cam0", "frames": 40}]}


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"fps": "fast"}', b'{"fps": -1}', b'{"fps": true}',
                                     b'{"streams": {}}', b'{"streams": [1]}', b'{"streams": [{"state": 3}]}',
                                     b"\xff\xfe"])
def test_parse_health_refuses(payload):
    with pytest.raises(MalformedMessage):
        parse_health(payload)


@pytest.mark.parametrize("payload", [b"{}", b'{"type": "gone", "after": {"label": "x"}}',
                                     b'{"type": "new"}', b'{"type": "new", "after": {"label": 3}}'])
def test_parse_event_refuses(payload):
    with pytest.raises(MalformedMessage):
        parse_event(payload)


@pytest.mark.parametrize("topic, payload, applied", [
    ("edgefleet/dev-1/available", b"online", {"available": "online"}),
    ("edgefleet/dev-1/stats", b'{"fps": 3}', {"health": {"fps": 3, "streams": []}}),
    ("edgefleet/dev-1/cam0/events", b'{"type": "end", "after": {"label": "person"}}', {"stream_id": "cam0"}),
])
def test_bridge_handle_applies(topic, payload, applied):
    calls = []
    bridge = MqttBridge(lambda device_id, **kw: calls.append((device_id, kw)), "127.0.0.1", 1, allow=["dev-*"])
    bridge.handle(topic, payload)
    assert calls == [("dev-1", applied)]


def test_bridge_accepts_only_allowed_devices():
    calls = []
    bridge = MqttBridge(lambda device_id, **kw: calls.append(device_id), "127.0.0.1", 1, allow=["porch-*", "shed"])
    for device in ("porch-cam", "shed", "shed-2", "rogue"):
        bridge.handle(f"edgefleet/{device}/available", b"online")
    bridge.handle("edgefleet/rogue/available", b"online")
    assert calls == ["porch-cam", "shed"]
    assert bridge.ignored == 3 and bridge.ignored_devices == {"shed-2", "rogue"}
    nobody = MqttBridge(lambda *a, **kw: pytest.fail("applied without --mqtt-allow"), "127.0.0.1", 1)
    nobody.handle("edgefleet/porch-cam/available", b"online")
    assert nobody.ignored == 1


@pytest.mark.parametrize("topic, payload", [
    ("edgefleet/dev-1/available", b"maybe"),
    ("edgefleet/bad id/available", b"online"),
    ("edgefleet/dev-1/cam 0/events", b'{"type": "new", "after": {"label": "x"}}'),
    ("other/dev-1/stats", b"{}"),
    ("edgefleet/dev-1/whatever", b"{}"),
])
def test_bridge_handle_refuses(topic, payload):
    bridge = MqttBridge(lambda *a, **kw: pytest.fail("applied a malformed message"), "127.0.0.1", 1, allow=["*"])
    with pytest.raises(MalformedMessage):
        bridge.handle(topic, payload)
