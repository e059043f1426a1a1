"""`edge-agent run --config FILE`: keys are the run flags; mistakes name the file, line and key."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.cli import build_parser
from edgefleet.agent.flags import parse_args
from edgefleet.agent.watchdog import Watchdog


def parse(tmp_path: Path, text: str, *extra: str):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return parse_args(build_parser(), ["run", "--config", str(path), *extra]).config


def error_of(tmp_path: Path, text: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(tmp_path, text)
    assert exc.value.code == 2
    return capsys.readouterr().err


BASE = "controller: fleet.example:50051\nsources: [vtest.avi]\n"


def test_values_become_the_run_flags(tmp_path):
    args = parse(tmp_path, BASE + "detect-interval: 3\nmotion_gate: 2.5\nloop: true\nstate-dir: /var/lib/edgefleet\n"
                               "enroll-key: efk_abc\nno-calibrate: true\nlog-level: debug\n")
    assert args.controller == "fleet.example:50051"
    assert args.source == ["vtest.avi"]
    assert args.stream_id is None
    assert (args.detect_interval, args.motion_gate, args.loop) == (3, 2.5, True)
    assert args.state_dir == Path("/var/lib/edgefleet")
    assert args.enroll_key == "efk_abc"
    assert args.calibrate is False
    assert args.log_level == "debug"


def test_command_line_flags_win(tmp_path):
    args = parse(tmp_path, BASE + "detect_interval: 3\n", "--detect-interval", "5", "--controller", "other:1")
    assert (args.detect_interval, args.controller) == (5, "other:1")


def test_sources_list_with_stream_ids(tmp_path):
    args = parse(tmp_path, "controller: h:1\nsources:\n  - uri: rtsp://cam/door\n    stream_id: door\n"
                           "  - 0\n  - {uri: yard.mp4, stream_id: yard}\n")
    assert args.source == ["rtsp://cam/door", "0", "yard.mp4"]
    assert args.stream_id == ["door", "cam1", "yard"]


def test_command_line_sources_replace_the_files(tmp_path):
    args = parse(tmp_path, "controller: h:1\nsources: [{uri: a.mp4, stream_id: a}, b.mp4]\n", "--source", "c.mp4")
    assert args.source == ["c.mp4"]
    assert args.stream_id is None


def test_source_flag_name_takes_a_string_or_a_list(tmp_path):
    assert parse(tmp_path, "controller: h:1\nsource: a.mp4\n").source == ["a.mp4"]
    assert parse(tmp_path, "controller: h:1\nsource: [a.mp4, 1]\nstream-id: [x, y]\n").stream_id == ["x", "y"]


def test_empty_file_changes_nothing(tmp_path):
    args = parse(tmp_path, "# nothing yet\n", "--controller", "h:1", "--source", "a")
    assert args.detect_interval == 1


def test_required_flags_still_required(tmp_path, capsys):
    err = error_of(tmp_path, "sources: [a]\n", capsys)
    assert "--controller" in err


@pytest.mark.parametrize("text, expected", [
    # not YAML
    ("controller: h:1\nsources: [a\n", "agent.yaml:3: not valid YAML"),
    ("controller: h:1\n  bad: indent\n", "agent.yaml:2: not valid YAML"),
    # not a mapping
    ("- a\n- b\n", "expected a mapping of flag names to values at the top, got a list"),
    # unknown keys
    (BASE + "detect_intervl: 2\n", "agent.yaml:3: detect_intervl: unknown key (did you mean 'detect-interval'?)"),
    (BASE + "config: other.yaml\n", "agent.yaml:3: config: unknown key"),
    (BASE + "help: true\n", "agent.yaml:3: help: unknown key"),
    ("controller: h:1\nsources: [{uri: a, stream: x}]\n", "agent.yaml:2: sources[0]: unknown key 'stream'"),
    # a key twice, or the same flag twice
    (BASE + "loop: true\nloop: false\n", "agent.yaml:4: key 'loop' given twice (first on line 3)"),
    (BASE + "max-frames: 1\nmax_frames: 2\n", "agent.yaml:4: max_frames: sets the same flag (--max-frames)"),
    ("controller: h:1\nsources: [a]\nsource: b\n", "agent.yaml:3: source: sets the same flag"),
    # wrong types
    (BASE + "detect_interval: two\n", "agent.yaml:3: detect_interval: must be an integer, got str 'two'"),
    (BASE + "detect_interval: 1.5\n", "detect_interval: must be an integer, got a number (1.5)"),
    (BASE + "detect_interval: true\n", "detect_interval: must be an integer, got a boolean (true)"),
    (BASE + "drain_timeout: [1]\n", "drain_timeout: must be a single value, got a list"),
    (BASE + "loop: yes please\n", "agent.yaml:3: loop: must be true or false, got str 'yes please'"),
    (BASE + "enroll_key: true\n", "enroll_key: must be a string, got a boolean (true) (quote it)"),
    (BASE + "state_dir: {a: 1}\n", "state_dir: must be a single value, got a mapping"),
    (BASE + "name:\n", "agent.yaml:3: name: has no value"),
    ("controller: 50051\nsources: [a]\n", "agent.yaml:1: controller: --controller must be HOST:PORT, got '50051'"),
    ("controller: h:1\nsources: a.mp4\n", "agent.yaml:2: sources: must be a non-empty list of sources"),
    ("controller: h:1\nsources: []\n", "sources: must be a non-empty list of sources, got a list"),
    ("controller: h:1\nsources: [{stream_id: x}]\n", "agent.yaml:2: sources[0]: uri is missing"),
    ("controller: h:1\nsources:\n  - a\n  - [b]\n", "agent.yaml:4: sources[1]: a source is a file"),
    ("controller: h:1\nsources: [{uri: a, stream_id: [x]}]\n", "sources[0].stream_id: must be a non-empty string"),
    # choices
    (BASE + "log_level: loud\n", "agent.yaml:3: log_level: must be one of debug, info, warning, error, got 'loud'"),
    # out of range
    (BASE + "detect_interval: 0\n", "agent.yaml:3: detect_interval: must be >= 1, got 0"),
    (BASE + "max_frames: -1\n", "max_frames: must be >= 0, got -1"),
    (BASE + "motion_gate: 300\n", "motion_gate: must be <= 255, got 300"),
    (BASE + "target_fps: 0\n", "target_fps: must be > 0, got 0"),
    (BASE + "threads: 0\n", "threads: must be >= 1, got 0"),
    (BASE + "commit_interval_s: 90\n", "commit_interval_s: must be <= 60, got 90"),
    (BASE + "mqtt_prefix: 'a/+'\n", "mqtt_prefix: must be a non-empty topic"),
    # streams twice, duplicate ids
    ("controller: h:1\nsources: [{uri: a, stream_id: x}, {uri: b, stream_id: x}]\n",
     "agent.yaml:2: sources: stream_id 'x' is used twice"),
    ("controller: h:1\nstream_id: [x]\nsources: [a]\n", "sources: give the streams either in 'sources' or in"),
])
def test_errors_name_the_file_line_and_key(tmp_path, capsys, text, expected):
    err = error_of(tmp_path, text, capsys)
    assert err.startswith("edge-agent: error: ")
    assert expected in err
    assert str(tmp_path / "agent.yaml") in err


@pytest.mark.parametrize("argv, expected", [
    (["run", "--controller", "h:1", "--source", "a", "--motion-gate", "300"], "--motion-gate must be <= 255, got 300"),
    (["run", "--controller", "h:1", "--source", "a", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["run", "--controller", "h:1", "--source", "a", "--drain-timeout", "-1"], "--drain-timeout must be >= 0, got -1"),
    (["run", "--controller", "h:1", "--source", "a", "--commit-interval-s", "-1"],
     "--commit-interval-s must be >= 0, got -1"),
    (["serve", "--listen", "127.0.0.1:0", "--max-frame-bytes", "0"], "--max-frame-bytes must be >= 1, got 0"),
    (["serve", "--listen", "127.0.0.1:0", "--detect-interval", "0"], "--detect-interval must be >= 1, got 0"),
    (["plan", "--target-fps", "0"], "--target-fps must be > 0, got 0"),
])
def test_flags_on_the_command_line_have_the_config_file_bounds(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-agent {argv[0]}: error: ") and expected in err


def test_the_command_line_overrides_the_file_within_the_same_bounds(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(tmp_path, BASE + "motion_gate: 10\n", "--motion-gate", "256")
    assert "--motion-gate must be <= 255, got 256" in capsys.readouterr().err
    assert parse(tmp_path, BASE + "motion_gate: 10\n", "--motion-gate", "255").motion_gate == 255


def test_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), ["run", "--config", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "nope.yaml: No such file or directory" in capsys.readouterr().err


def test_not_utf8(tmp_path, capsys):
    (tmp_path / "agent.yaml").write_bytes(b"controller: \xff\n")
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["run", "--config", str(tmp_path / "agent.yaml")])
    assert "not UTF-8" in capsys.readouterr().err


def test_other_commands_ignore_config_words(tmp_path):
    args = parse_args(build_parser(), ["--log-level", "debug", "plan", "--source", "run"])
    assert args.command == "plan" and args.source == "run"


def test_exit_code_from_the_real_command(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + "detect_interval: 0\n")
    proc = subprocess.run([sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}:3: detect_interval: must be >= 1, got 0" in proc.stderr


# ---- one AgentConfig for run and serve ----

def test_serve_takes_a_config_file_and_the_run_settings_that_apply_to_it(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("listen: 127.0.0.1:0\ncontroller: h:1\nsources: [a.mp4]\noutbox-max-mb: 64\n"
                    "commit_interval_s: 1\nbackoff-max-s: 3\ndownload-mbps: 2\nmax-batch: 4\n")
    config = parse_args(build_parser(), ["serve", "--config", str(path), "--motion-gate", "2"]).config
    assert (config.listen, config.controller, config.source) == ("127.0.0.1:0", "h:1", ["a.mp4"])
    assert (config.outbox_max_mb, config.commit_interval_s, config.backoff_max_s, config.download_mbps) == \
        (64, 1, 3, 2)
    assert (config.max_batch, config.motion_gate, config.serving) == (4, 2, True)


def test_run_and_serve_flags_are_the_same_settings():
    from edgefleet.agent.config import AgentConfig
    from edgefleet.agent.flags import COMMAND_GROUPS, GROUPS

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(set(AgentConfig.model_fields) - {"log_level"}), "each setting in one group"
    shared = set(COMMAND_GROUPS["run"]) & set(COMMAND_GROUPS["serve"])
    assert {"the controller", "local streams", "the outbox", "deployments", "reporting"} <= shared


@pytest.mark.parametrize("argv, expected", [
    (["serve", "--controller", "h:1"], "--listen is required"),
    (["serve", "--listen", "127.0.0.1:0", "--source", "a"], "--source needs --controller"),
    (["run", "--controller", "h:1", "--source", "a", "--auto-plan", "--detect-interval", "2"],
     "--detect-interval and --auto-plan conflict: the plan chooses the detect interval"),
    (["run", "--controller", "h:1", "--source", "a", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["run", "--controller", "h:1", "--source", "a", "--stream-id", "x", "--stream-id", "y"],
     "2 --stream-id for 1 --source; give one each"),
    (["run", "--source", "a"], "--controller is required"),
])
def test_conflicting_settings_are_refused_with_the_reason(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        parse_args(build_parser(), argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-agent {argv[0]}: error: ") and expected in err


def test_a_conflict_between_the_file_and_a_flag_is_refused_too(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(tmp_path, BASE + "detect-interval: 2\n", "--auto-plan")
    assert "--detect-interval and --auto-plan conflict" in capsys.readouterr().err
    assert parse(tmp_path, BASE + "auto-plan: true\n").detect_interval == 1, "the default is no conflict"


def test_idle_settings_are_noted_not_refused(tmp_path):
    config = parse(tmp_path, BASE + "no-calibrate: true\ntarget-fps: 10\n")
    assert config.notes() == ["--target-fps has no effect without --auto-plan",
                              "--no-calibrate has no effect without --auto-plan"]
    serving = parse_args(build_parser(), ["serve", "--listen", "127.0.0.1:0", "--outbox-max-mb", "1"]).config
    assert serving.notes() == ["--outbox-max-mb: no effect without --controller (serving only)"]
    assert parse(tmp_path, BASE).notes() == []


def test_the_model_is_the_one_check_for_api_callers_too(tmp_path):
    from pydantic import ValidationError

    from edgefleet.agent.config import AgentConfig

    config = AgentConfig(controller="h:1", source=["a"], state_dir=tmp_path, motion_gate=2.5)
    assert config.stream_ids == ["cam0"] and config.motion_gate == 2.5
    with pytest.raises(ValidationError, match="less than or equal to 255"):
        AgentConfig(controller="h:1", source=["a"], motion_gate=300)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AgentConfig(controller="h:1", source=["a"], motion_threshold=2)


# ---- sd_notify ----

def test_watchdog_sends_ready_pings_and_stopping(tmp_path):
    address = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(2)
    try:
        dog = Watchdog.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000"})
        assert dog.every_s == pytest.approx(1.0)
        dog.ready()
        assert server.recv(100) == b"READY=1"
        dog.tick(now=dog._last + 0.5)  # not due yet
        dog.tick(now=dog._last + 1.0)
        assert server.recv(100) == b"WATCHDOG=1"
        dog.stopping()
        assert server.recv(100) == b"STOPPING=1"
    finally:
        server.close()


def test_watchdog_without_systemd_does_nothing():
    dog = Watchdog.from_env({})
    assert not dog.enabled
    dog.ready()
    dog.tick()
    dog.stopping()
    assert Watchdog.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).every_s == 5.0
