"""agent.desired: the controller's document is read like agent.yaml, refused with its reasons, ranked
over file and flags, sorted by how it takes effect, and kept atomically in the state dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.agent.cli import build_parser
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.convert import command_from_pb, config_status_to_pb
from edgefleet.agent.desired import (
    ApplyConfig,
    ConfigStatus,
    DesiredConfig,
    DesiredConfigError,
    DesiredStore,
    changes,
    check_document,
    merge,
    read_document,
)
from edgefleet.agent.flags import parse_args
from edgefleet.v1 import agent_pb2


def base_config(tmp_path: Path, *extra: str) -> AgentConfig:
    """What `edge-agent run` would run: agent.yaml (detect interval 2, one source) and flags."""
    (tmp_path / "agent.yaml").write_text("detect-interval: 2\nsources: [{uri: a.mp4, stream_id: door}]\n"
                                         "motion-gate: 3\n")
    argv = ["run", "--config", str(tmp_path / "agent.yaml"), "--controller", "ctl:50051",
            "--state-dir", str(tmp_path / "state"), *extra]
    return parse_args(build_parser(), argv).config


def apply(desired: DesiredConfig, version: int, document: str):
    command = ApplyConfig("c1", version, document)
    change = desired.prepare(command)
    return change, desired.applied(command, change)


@pytest.mark.parametrize("document, expected", [
    ("controller: other:1\n", "desired config v7:1: controller: set on the device only"),
    ("state-dir: /tmp/x\n", "desired config v7:1: state-dir: set on the device only"),
    ("enroll_key: efk_x\n", "desired config v7:1: enroll_key: set on the device only"),
    ("tls-ca: ca.pem\n", "desired config v7:1: tls-ca: set on the device only"),
    ("token: t\n", "desired config v7:1: token: set on the device only"),
    ("detect-interval: 0\n", "desired config v7:1: detect-interval: must be >= 1, got 0"),
    ("motion_gate: 300\n", "desired config v7:1: motion_gate: must be <= 255, got 300"),
    ("detect-intervl: 3\n", "desired config v7:1: detect-intervl: unknown key (did you mean 'detect-interval'?)"),
    ("- a list\n", "desired config v7: expected a mapping of flag names to values at the top, got a list"),
    ("sources: [b.mp4]\nsource: c.mp4\n", "desired config v7:2: source: sets the same flag"),
])
def test_a_refused_document_names_each_reason(tmp_path, document, expected):
    desired = DesiredConfig(base_config(tmp_path), DesiredStore(tmp_path / "state"))
    with pytest.raises(DesiredConfigError) as caught:
        desired.prepare(ApplyConfig("c1", 7, document))
    assert any(error.startswith(expected) for error in caught.value.errors), caught.value.errors
    assert desired.current == desired.base


def test_every_reason_at_once():
    with pytest.raises(DesiredConfigError) as caught:
        read_document(3, "controller: x:1\nstate-dir: /x\n")
    assert len(caught.value.errors) == 2


def test_precedence_defaults_file_flags_document(tmp_path):
    base = base_config(tmp_path, "--detect-interval", "4", "--max-frames", "50")
    assert (base.detect_interval, base.motion_gate, base.max_frames) == (4, 3.0, 50)  # flag over file
    merged = merge(base, read_document(1, "detect-interval: 6\n"))
    assert (merged.detect_interval, merged.motion_gate, merged.max_frames) == (6, 3.0, 50)  # document over flag
    assert merged.controller == "ctl:50051" and merged.stream_ids == ["door"]
    assert merge(base, read_document(2, "")) == base  # an empty document: back to file and flags


def test_the_document_s_sources_replace_the_device_s_with_their_ids(tmp_path):
    merged = merge(base_config(tmp_path), read_document(1, "sources: [b.mp4, c.mp4]\n"))
    assert merged.source == ["b.mp4", "c.mp4"] and merged.stream_ids == ["cam0", "cam1"]


def test_a_document_that_conflicts_with_the_device_s_own_settings_is_refused(tmp_path):
    base = base_config(tmp_path)
    with pytest.raises(DesiredConfigError, match="--detect-interval and --auto-plan conflict"):
        merge(base, read_document(1, "auto-plan: true\n"))


@pytest.mark.parametrize("document, live, loop, later, how", [
    ("detect-interval: 5\n", ("detect_interval",), (), (), "live"),
    ("motion-gate: 0\n", ("motion_gate",), (), (), "live"),
    ("sources: [{uri: b.mp4, stream_id: yard}]\n", (), ("source", "stream_id"), (), "loop restarted"),
    ("detect-interval: 2\n", (), (), (), "unchanged"),
    ("mqtt: broker:1883\ndetect-interval: 3\n", ("detect_interval",), (), ("mqtt",), "live; at next start: mqtt"),
])
def test_changes_are_sorted_by_how_they_take_effect(tmp_path, document, live, loop, later, how):
    base = base_config(tmp_path)
    change = changes(base, merge(base, read_document(1, document)))
    assert (change.live, change.loop, change.next_start, change.how) == (live, loop, later, how)


def test_applied_documents_persist_and_the_next_start_runs_them(tmp_path):
    base = base_config(tmp_path)
    desired = DesiredConfig.at_start(base)
    assert desired.status == ConfigStatus() and desired.current == base
    _, status = apply(desired, 3, "detect-interval: 5\n")
    assert (status.applied_version, status.applied_document, status.how) == (3, "detect-interval: 5\n", "live")
    again = DesiredConfig.at_start(base)
    assert again.current.detect_interval == 5
    assert (again.status.applied_version, again.status.how) == (3, "at start")
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / "desired.yaml"]  # no temp file left


def test_a_refusal_keeps_the_applied_version(tmp_path):
    desired = DesiredConfig.at_start(base_config(tmp_path))
    apply(desired, 1, "detect-interval: 5\n")
    status = desired.refused(ApplyConfig("c2", 2, "x: 1"), ["bad"])
    assert (status.applied_version, status.refused_version, status.errors) == (1, 2, ("bad",))
    assert desired.current.detect_interval == 5


def test_a_persisted_document_that_no_longer_fits_the_file_is_refused_at_start(tmp_path):
    DesiredStore(tmp_path / "state").save(4, "auto-plan: true\n")
    desired = DesiredConfig.at_start(base_config(tmp_path))
    assert desired.current == desired.base
    assert desired.status.refused_version == 4 and "conflict" in desired.status.errors[0]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    store = DesiredStore(tmp_path)
    store.save(1, "detect-interval: 2\n")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        store.save(2, "detect-interval: 3\n")
    assert store.load() == (1, "detect-interval: 2\n")
    assert [p.name for p in tmp_path.iterdir()] == ["desired.yaml"]


@pytest.mark.parametrize("text", ["{not yaml", "version: x\ndocument: 1\n", "- 1\n"])
def test_a_damaged_file_is_ignored(tmp_path, text):
    (tmp_path / "desired.yaml").write_text(text)
    assert DesiredStore(tmp_path).load() is None


def test_wire_forms():
    pb = agent_pb2.Command(command_id="c9", apply_config=agent_pb2.ApplyConfig(version=5, document="loop: true\n"))
    assert command_from_pb(pb) == ApplyConfig("c9", 5, "loop: true\n")
    status = ConfigStatus(4, 5, ("why",), "loop: true\n", "live")
    assert config_status_to_pb(status) == agent_pb2.ConfigStatus(
        applied_version=4, refused_version=5, errors=["why"], applied_document="loop: true\n", how="live")


def test_a_character_yaml_does_not_allow_is_a_refusal_not_a_crash():
    with pytest.raises(DesiredConfigError, match=r"desired config v2: not valid YAML: unacceptable character #x001b"):
        read_document(2, "\x1bdetect-interval: 2\n")


def test_the_controller_checks_zones_and_lines_as_the_device_does_and_still_refuses_a_quoted_number():
    line = "analytics:\n  cam0:\n    lines: {door: {points: [[0.1, 0.6], [0.9, 0.6]]}}\n"
    assert check_document(line) == []
    assert "zero length" in " ".join(check_document(line.replace("[0.9, 0.6]", "[0.1, 0.6]")))
    assert check_document("detect-interval: '5'\n"), "a string is no interval, even one that reads as a number"
