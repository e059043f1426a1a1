"""Resilience with real processes: a controller and agents SIGKILLed, a flaky link, a full outbox,
a live stream that dies and comes back, bad input. Every check is an exact count read from the
controller's SQLite store and the agent's outbox: each sequence the agent produced is stored
exactly once by (device, sequence), none missing, none reused."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import ROOT, first_frames, free_port, wait_for
from ..delivery import assert_frames_once
from ..processes import ControllerProcess, outbox_state, read_db
from ..tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

AGENT_LIGHT = ("--detect-interval", "3", "--threads", "1")
"""Keeps the agent light on a 2-core machine: the controller and a second process share it."""


# ---- real processes ----

class AgentProcess:
    """`python -m edgefleet.agent.cli run`; stdout (the summary) piped, stderr to a file."""

    def __init__(self, address: str, source, state_dir: Path, *extra: str, log: Path):
        self.log_path = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "run", "--controller", address,
                 "--source", str(source), "--state-dir", str(state_dir), "--enroll-key", "efk_test", *extra],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout: float = 120.0, terminate: bool = False) -> tuple[int, dict | None, str]:
        """SIGTERM when `terminate` (a clean stop: commit, drain, summary); exit code, summary, stderr."""
        if terminate:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        lines = out.strip().splitlines()
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return self.proc.returncode, summary, self.log_path.read_text()

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def stored_sequences(db: Path) -> list[int]:
    """Every stored (device, sequence)'s sequence, duplicates kept: the test's own check of the store."""
    return [s for (s,) in read_db(db, "select sequence from detections order by sequence")]


def stored_rows(db: Path) -> list[tuple]:
    return read_db(db, "select device_id, sequence, stream_id, frame_index from detections order by sequence")


def assert_exactly_once(db: Path, device_id: str, records: int, frames: int | None = None) -> None:
    """Every record the agent produced (`records`: sequences 1..records, of every kind: frames, object
    events, counts, snapshots) stored once; the frames among them each once, in order (`frames`: how many,
    when the agent could say)."""
    rows = stored_rows(db)
    sequences = [r[1] for r in rows]
    assert {r[0] for r in rows} == {device_id}
    assert_frames_once(sequences, len(sequences) if frames is None else frames, records)
    # the controller's own counters agree: replays after reconnects were not counted as stored
    assert read_db(db, "select detections_stored, records_stored, acked_sequence from devices where device_id = ?",
                   (device_id,)) == [(len(sequences), records, records)]


@pytest.fixture
def logs(tmp_path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


# ---- 1. the controller killed five times ----

def test_controller_sigkilled_five_times_loses_and_duplicates_nothing(vtest, tmp_path, logs):
    ctl = ControllerProcess(tmp_path / "fleet.db", free_port(), logs).start()
    state = tmp_path / "agent"
    agent = AgentProcess(ctl.address, vtest, state, "--loop", "--backoff-max-s", "2", "--drain-timeout", "60",
                         *AGENT_LIGHT, log=logs / "agent.log")
    rng = random.Random(1)
    try:
        stored_before_kill, unacked_while_down = [], []
        for _ in range(5):
            floor = len(stored_sequences(ctl.db)) + 10  # this incarnation must have stored some more
            wait_for(lambda floor=floor: len(stored_sequences(ctl.db)) >= floor, 90, f"{floor} stored detections")
            ctl.kill()
            stored_before_kill.append(len(stored_sequences(ctl.db)))
            time.sleep(rng.uniform(0.2, 1.5))  # down for a while, the agent keeps producing into its outbox
            unacked_while_down.append(len(outbox_state(state)[0]))
            ctl.start()
        floor = len(stored_sequences(ctl.db)) + 10
        wait_for(lambda: len(stored_sequences(ctl.db)) >= floor, 90, "detections after the last restart")
        code, summary, stderr = agent.finish(terminate=True)
        assert code == 0, stderr
        produced = summary["acked_sequence"]
        assert produced == outbox_state(state)[1]
        assert summary["outbox_left"] == 0 and outbox_state(state)[0] == []
        assert_exactly_once(ctl.db, summary["device_id"], produced, summary["frames"])
        assert stored_before_kill == sorted(stored_before_kill) and stored_before_kill[-1] < summary["frames"]
        assert all(unacked_while_down), f"records waited in the outbox during each outage: {unacked_while_down}"
        assert "Traceback" not in stderr
    finally:
        agent.ensure_dead()
        ctl.stop()


# ---- 2. the agent killed five times ----

def test_agent_sigkilled_five_times_delivers_every_committed_record_and_never_reuses_a_sequence(
        vtest, tmp_path, logs):
    ctl = ControllerProcess(tmp_path / "fleet.db", free_port(), logs).start()
    proxy = TcpProxy(("127.0.0.1", ctl.port)).start()  # stalled before each kill, so the outbox holds records
    state = tmp_path / "agent"
    agents: list[AgentProcess] = []
    # (unacknowledged sequences, highest, the unacknowledged frames' sequences) read after each kill
    committed_at_kill: list[tuple[list[int], int, list[int]]] = []

    def start_agent(*extra: str) -> AgentProcess:
        agents.append(AgentProcess(proxy.address, vtest, state, "--loop", "--backoff-max-s", "1", *extra,
                                   *AGENT_LIGHT, log=logs / f"agent-{len(agents) + 1}.log"))
        return agents[-1]

    try:
        agent = start_agent()
        for _ in range(5):
            before = outbox_state(state)[1]
            wait_for(lambda before=before: outbox_state(state)[1] >= before + 10, 90, "the agent producing again")
            proxy.stall()  # acks stop coming: the outbox keeps what the controller has not acknowledged
            wait_for(lambda: len(outbox_state(state)[0]) >= 10, 60, "10 unacknowledged records")
            agent.kill()
            committed_at_kill.append((*outbox_state(state), [s for (s,) in read_db(
                state / "outbox.db", "select sequence from outbox where kind = 'frame' order by sequence")]))
            proxy.drop()
            proxy.resume()
            agent = start_agent()
        before = outbox_state(state)[1]
        wait_for(lambda: outbox_state(state)[1] >= before + 10, 90, "the last run producing")
        code, summary, stderr = agent.finish(terminate=True)
        assert code == 0, stderr
        produced = summary["acked_sequence"]
        assert produced == outbox_state(state)[1] and outbox_state(state)[0] == []
        assert_exactly_once(ctl.db, summary["device_id"], produced)
        stored = {row[1]: row for row in stored_rows(ctl.db)}
        highest = [last for _, last, _ in committed_at_kill]
        assert highest == sorted(set(highest)), "each run numbers on from the last"
        for pending, last, pending_frames in committed_at_kill:
            assert pending and pending[-1] == last, "the killed agent had committed these and not had them acked"
            assert pending_frames and set(pending_frames) <= set(stored), "every frame committed before the kill"
            # the next run's first record, frame 0 of the video, took the next sequence: none reused, none skipped
            assert stored[last + 1][3] == 0
        assert "Traceback" not in stderr
    finally:
        for agent in agents:
            agent.ensure_dead()
        proxy.stop()
        ctl.stop()


# ---- 3. a flaky link ----

def test_backoff_grows_exponentially_with_jitter_up_to_its_cap():
    from edgefleet.agent.link import Backoff

    random.seed(7)
    backoff = Backoff(initial=0.5, maximum=4.0)
    delays = [backoff.next_delay() for _ in range(7)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings)), delays
    assert len({round(d, 6) for d in delays[3:]}) == 4, "jitter: capped delays still differ"
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_flaky_link_drops_and_stalls_lose_and_duplicate_nothing(vtest, tmp_path, logs):
    ctl = ControllerProcess(tmp_path / "fleet.db", free_port(), logs).start()
    proxy = TcpProxy(("127.0.0.1", ctl.port)).start()
    state = tmp_path / "agent"
    agent = AgentProcess(proxy.address, vtest, state, "--loop", "--backoff-max-s", "2", "--drain-timeout", "60",
                         *AGENT_LIGHT, log=logs / "agent.log")
    try:
        wait_for(lambda: len(stored_sequences(ctl.db)) >= 10, 90, "first detections through the proxy")
        schedule = [("drop", 0), ("wait", 1.5), ("stall", 2.0), ("wait", 1.0), ("refuse", 2.5), ("wait", 1.5),
                    ("drop", 0), ("stall", 1.0), ("drop", 0), ("wait", 1.0), ("refuse", 1.5), ("wait", 1.0),
                    ("stall", 2.5), ("wait", 0.5), ("drop", 0)]
        proxy.run_schedule(schedule).join(60)
        floor = len(stored_sequences(ctl.db)) + 20
        wait_for(lambda: len(stored_sequences(ctl.db)) >= floor, 90, "detections after the last fault")
        code, summary, stderr = agent.finish(terminate=True)
        assert code == 0, stderr
        produced = summary["acked_sequence"]
        assert produced == outbox_state(state)[1]
        assert_exactly_once(ctl.db, summary["device_id"], produced, summary["frames"])
        assert proxy.stalls == 3
        assert proxy.dropped >= 4, "the drops closed live connections"
        assert proxy.accepted >= 1 + 4, "the agent dialled again after each drop"
        assert proxy.refused >= 2, "it kept trying while the link refused it"
        assert "retrying with backoff" in stderr
        assert "Traceback" not in stderr
    finally:
        agent.ensure_dead()
        proxy.stop()
        ctl.stop()


# ---- 4. a bounded outbox while the controller is away ----

def test_full_outbox_drops_the_oldest_records_counts_them_and_keeps_the_camera_loop_going(vtest, tmp_path, logs):
    port = free_port()  # nothing listens there during the first run
    state = tmp_path / "agent"
    limit = 5000  # bytes: a handful of records
    config = tmp_path / "agent.yaml"  # no snapshots: none fits 5 kB (a record over the bound goes alone: test_outbox)
    config.write_text("snapshots: {enabled: false}\n")
    first = AgentProcess(f"127.0.0.1:{port}", vtest, state, "--max-frames", "60", "--drain-timeout", "1",
                         "--outbox-max-mb", str(limit / 1e6), "--config", str(config), *AGENT_LIGHT,
                         log=logs / "agent-1.log")
    code, summary, stderr = first.finish()
    assert code == 4, stderr  # controller unreachable: what is kept stays for the next run
    kept, last = outbox_state(state)
    kept_frames = [s for (s,) in read_db(state / "outbox.db", "select sequence from outbox where kind = 'frame'"
                                          " order by sequence")]
    dropped = read_db(state / "outbox.db", "select value from outbox_meta where key = 'dropped'")[0][0]
    size = read_db(state / "outbox.db", "select value from outbox_meta where key = 'bytes'")[0][0]
    assert summary["frames"] == 60, "the camera loop produced every frame while the outbox was full"
    assert last >= 60, "sequences of frames and of their objects' records"
    assert 0 < len(kept) < last and size <= limit
    assert kept == list(range(last + 1 - len(kept), last + 1)), "the newest records stay, the oldest went first"
    assert dropped == last - len(kept)
    assert f"dropped {dropped} record(s) in all" in stderr
    assert f"did not acknowledge {len(kept)} record(s)" in stderr
    assert "Traceback" not in stderr

    ctl = ControllerProcess(tmp_path / "fleet.db", port, logs).start()
    try:
        code, summary, stderr = AgentProcess(ctl.address, vtest, state, "--max-frames", "5", *AGENT_LIGHT,
                                             log=logs / "agent-2.log").finish()
        assert code == 0, stderr
        assert (summary["outbox_left"], summary["outbox_dropped"]) == (0, 0)
        stored = stored_sequences(ctl.db)
        assert stored[:len(kept_frames)] == kept_frames, "the frames kept were delivered first"
        assert_frames_once(stored[len(kept_frames):], 5, summary["acked_sequence"])
        assert stored[len(kept_frames)] > last, "then the second run's frames, numbered on"
        (health,) = read_db(ctl.db, "select health from devices")[0]
        assert int(json.loads(health)["outbox_dropped"]) == dropped  # the operator sees what was lost
    finally:
        ctl.stop()


# ---- 5. a live stream that dies and comes back ----

def device_stream_states(db: Path) -> list[str]:
    """The stream states in the device's latest health sample, as the controller stored it."""
    rows = read_db(db, "select health from devices")
    return [s.get("state", "") for (health,) in rows for s in json.loads(health or "{}").get("streams", [])]


def test_live_stream_that_dies_and_returns_is_reconnected_under_the_same_stream_id(vtest, tmp_path, logs):
    from ..mjpeg_server import MjpegServer

    camera = MjpegServer(first_frames(vtest, 40), fps=10).start()
    ctl = ControllerProcess(tmp_path / "fleet.db", free_port(), logs).start()
    state = tmp_path / "agent"
    agent = AgentProcess(ctl.address, camera.url, state, "--stream-id", "door", *AGENT_LIGHT,
                         log=logs / "agent.log")
    try:
        wait_for(lambda: len(stored_sequences(ctl.db)) >= 10, 90, "frames from the live stream")
        camera.stop()
        died = time.time()
        wait_for(lambda: "reconnecting" in device_stream_states(ctl.db), 30, "the agent reporting the stream lost")
        camera.start()  # same port, same URL
        back = time.time()
        wait_for(lambda: len(read_db(ctl.db, "select 1 from detections where capture_time > ?", (back,))) >= 10, 60,
                 "frames after the stream returned")
        wait_for(lambda: device_stream_states(ctl.db) == ["running"], 30, "the stream running again")
        # A camera that hangs rather than hangs up: connections stay open, nothing comes (read timeout).
        camera.stall()
        hung = time.time()
        wait_for(lambda: "reconnecting" in device_stream_states(ctl.db), 60, "the agent giving up on the hung stream")
        camera.resume()
        resumed = time.time()
        wait_for(lambda: len(read_db(ctl.db, "select 1 from detections where capture_time > ?", (resumed,))) >= 10, 60,
                 "frames after the hung stream resumed")
        code, summary, stderr = agent.finish(terminate=True)
        assert code == 0, stderr
        assert summary["streams"] == {"door": summary["frames"]}
        assert_exactly_once(ctl.db, summary["device_id"], summary["acked_sequence"], summary["frames"])
        rows = read_db(ctl.db, "select stream_id, frame_index, capture_time from detections order by sequence")
        assert {stream for stream, _, _ in rows} == {"door"}, "one stream id before and after"
        before = [r for r in rows if r[2] < died]
        after = [r for r in rows if back < r[2] < hung]
        after_hang = [r for r in rows if r[2] > resumed]
        assert len(before) >= 10 and len(after) >= 10 and len(after_hang) >= 10
        indices = [index for _, index, _ in rows]
        assert indices == sorted(set(indices)), "frame indices keep counting across the reconnect"
        assert camera.clients >= 3, "the agent dialled the camera again after it died and after it hung"
        assert "stream lost; reconnecting" in stderr
        assert "Traceback" not in stderr
    finally:
        agent.ensure_dead()
        camera.stop()
        ctl.stop()


# ---- 6. bad input ----

def test_bad_video_files_end_cleanly_or_fail_with_a_clear_error(vtest, tmp_path, logs):
    """Exit codes (README, "Exit codes of `edge-agent run`"): a file that cannot be opened at all
    (garbage, empty) is a bad source, 2, with one line naming it; a truncated or partly corrupt
    file is read as far as it decodes and the run ends normally, 0, everything read delivered."""
    from ..conftest import ControllerThread

    data = vtest.read_bytes()
    rng = random.Random(5)
    damaged = bytearray(data[: len(data) // 8])
    for _ in range(10):  # overwrite blocks inside the stream (past the header)
        at = rng.randrange(len(damaged) // 4, len(damaged) - 2048)
        damaged[at:at + 1024] = rng.randbytes(1024)
    files = {"garbage.avi": rng.randbytes(100_000), "empty.avi": b"", "truncated.avi": data[: len(data) // 16],
             "damaged.avi": bytes(damaged)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    ctl = ControllerThread(tmp_path / "fleet.db")
    try:
        for name in ("garbage.avi", "empty.avi"):
            code, summary, stderr = AgentProcess(ctl.address, tmp_path / name, tmp_path / f"state-{name}",
                                                 *AGENT_LIGHT, log=logs / f"{name}.log").finish()
            assert (code, summary) == (2, None), stderr
            assert f"edge-agent: error: source '{tmp_path / name}': cannot be opened" in stderr
            assert "Traceback" not in stderr
        code, summary, stderr = AgentProcess(ctl.address, vtest, tmp_path / "garbage.avi", *AGENT_LIGHT,
                                             log=logs / "state-dir.log").finish()
        assert (code, summary) == (2, None), stderr
        assert f"edge-agent: error: --state-dir {tmp_path / 'garbage.avi'}: File exists" in stderr
        assert "Traceback" not in stderr
        total = 0
        for name in ("truncated.avi", "damaged.avi"):
            code, summary, stderr = AgentProcess(ctl.address, tmp_path / name, tmp_path / "agent", *AGENT_LIGHT,
                                                 log=logs / f"{name}.log").finish()
            assert code == 0, stderr
            assert "Traceback" not in stderr
            assert 0 < summary["frames"] < 795 // 4 and summary["outbox_left"] == 0
            total += summary["frames"]
        assert_exactly_once(tmp_path / "fleet.db", summary["device_id"], summary["acked_sequence"], total)
    finally:
        ctl.stop()
