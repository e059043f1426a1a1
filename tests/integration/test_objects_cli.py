"""`edgefleet objects`, `counts`, `snapshot` and `frame` as a user runs them: real `edgefleet serve` and a real
`edge-agent run` on vtest.avi with a counting line across the walkway (the demo's), and a viewer token."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import cv2
import grpc
import numpy as np
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.demo import ANALYTICS
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import ROOT, free_port, run_cli, samples_dir
from ..processes import ControllerProcess
from ..tui.agents import SimAgent

pytestmark = [pytest.mark.slow, pytest.mark.data]


class Fleet:
    def __init__(self, controller: ControllerProcess, token: str, agent: subprocess.Popen, log):
        self.controller, self.token, self.agent, self.log = controller, token, agent, log
        self.device_id = ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_cli("edgefleet.fleet.cli", *args, timeout=timeout,
                       env={"EDGEFLEET_CONTROLLER": self.controller.address, "EDGEFLEET_TOKEN": self.token})

    def json(self, *args: str):
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A controller and one agent, once it has counted a crossing and stored an object with a snapshot."""
    tmp = tmp_path_factory.mktemp("objects-cli")
    made = run_cli("edgefleet.fleet.cli", "operator-token", "create", "--db", str(tmp / "fleet.db"), "--create",
                   "--role", "viewer")
    assert made.returncode == 0, made.stderr
    controller = ControllerProcess(tmp / "fleet.db", free_port(), tmp).start()
    import yaml

    (tmp / "agent.yaml").write_text(yaml.safe_dump({"analytics": ANALYTICS["vtest.avi"]}))
    log = (tmp / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(tmp / "agent.yaml"), "--controller",
         controller.address, "--source", str(samples_dir() / "vtest.avi"), "--state-dir", str(tmp / "agent"),
         "--enroll-key", "efk_test", "--name", "walkway-cam", "--label", "site=lab", "--loop", "--threads", "1",
         "--pace", "fast"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    running = Fleet(controller, made.stdout.strip(), agent, tmp / "agent.log")
    try:
        running.device_id = _until_counted(running)
        yield running
    finally:
        agent.terminate()
        agent.wait(60)
        log.close()
        controller.stop()


def _until_counted(fleet: Fleet, timeout: float = 240) -> str:
    """The agent's device id, once the controller has a walkway crossing and an object with a snapshot."""
    deadline = time.monotonic() + timeout
    with open_channel(fleet.controller.address, token=fleet.token) as channel:
        stub = fleet_pb2_grpc.FleetControlStub(channel)
        while time.monotonic() < deadline:
            assert fleet.agent.poll() is None, f"agent exited:\n{fleet.log.read_text()[-3000:]}"
            try:
                counts = stub.CountObjects(fleet_pb2.CountObjectsRequest(name="walkway"), timeout=5)
                objects = stub.ListObjects(fleet_pb2.ListObjectsRequest(limit=1000), timeout=5).objects
            except grpc.RpcError:
                counts, objects = None, []
            if counts is not None and counts.total and any(o.has_snapshot and o.ended for o in objects):
                return objects[0].device_id
            time.sleep(1.0)
    pytest.fail(f"nothing counted on the walkway in {timeout:.0f} s:\n{fleet.log.read_text()[-3000:]}")


def test_objects_as_json_csv_and_a_table_and_pages_followed(fleet):
    listed = fleet.json("objects", "--device", fleet.device_id, "--limit", "1000")
    objects = listed["objects"]
    assert objects and all(o["device_id"] == fleet.device_id and o["stream_id"] == "cam0" for o in objects)
    assert isinstance(objects[0]["track_id"], int) and isinstance(objects[0]["best_score"], float)
    last_seen = [o["last_seen"] for o in objects]
    assert last_seen == sorted(last_seen, reverse=True)  # newest first (RFC 3339 in UTC sorts as time)

    paged = fleet.cli("objects", "--device", fleet.device_id, "--limit", "2", "--all", "--format", "csv")
    assert paged.returncode == 0, paged.stderr
    rows = list(csv.DictReader(io.StringIO(paged.stdout)))
    known = {o["object_id"] for o in objects}
    assert {r["object_id"] for r in rows} >= known - {o["object_id"] for o in objects if not o["ended"]}
    assert len(rows) == len({r["object_id"] for r in rows})  # no object twice across the pages

    crossed = fleet.cli("objects", "--line", "walkway", "--limit", "1000")
    assert crossed.returncode == 0, crossed.stderr
    lines = crossed.stdout.splitlines()
    assert lines[0].split()[0] == "OBJECT" and all("walkway " in line for line in lines[1:-1])
    assert lines[-1] == f"({len(lines) - 2} object{'' if len(lines) == 3 else 's'})"  # a header, a footer


def test_counts_add_up_to_their_total_in_every_format(fleet):
    counts = fleet.json("counts", "--device", fleet.device_id, "--line", "walkway", "--since", "7d")
    assert counts["total"] >= 1 and counts["total"] == sum(b["count"] for b in counts["buckets"])
    assert {b["direction"] for b in counts["buckets"]} <= {"in", "out"}

    table = fleet.cli("counts", "--group-by", "label:site", "--since", "7d")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["SITE", "KIND"] and lines[-1].split()[0] == "TOTAL"
    assert any(line.split()[:3] == ["lab", "line", "walkway"] for line in lines)

    hourly = fleet.cli("counts", "--by", "hour", "--group-by", "stream", "--since", "7d", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(hourly.stdout)))
    everything = fleet.json("counts", "--since", "7d")  # asked after: the agent may have counted more since
    assert rows and 0 < sum(int(r["count"]) for r in rows) <= everything["total"]
    assert all(r["start"].endswith(":00:00Z") and r["stream_id"] == "cam0" for r in rows)


def test_snapshot_writes_a_jpeg_and_keeps_an_existing_file(fleet, tmp_path):
    objects = fleet.json("objects", "--device", fleet.device_id, "--limit", "1000")["objects"]
    with_snapshot = next(o for o in objects if o["has_snapshot"] and o["ended"])
    crop, frame = tmp_path / "crop.jpg", tmp_path / "frame.jpg"
    done = fleet.cli("snapshot", with_snapshot["object_id"], "-o", str(crop))
    assert done.returncode == 0, done.stderr
    assert f"wrote {crop}" in done.stderr
    image = cv2.imdecode(np.frombuffer(crop.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 8 and image.shape[1] > 8

    again = fleet.cli("snapshot", with_snapshot["object_id"], "-o", str(crop))
    assert again.returncode == 2 and "exists: pass --force" in again.stderr
    described = fleet.json("snapshot", with_snapshot["object_id"], "--frame", "-o", str(frame))
    picture = cv2.imdecode(np.frombuffer(frame.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and described["kind"] == "frame" and described["bytes"] == frame.stat().st_size
    assert picture.shape[1] > image.shape[1]  # the frame, not the crop again

    missing = fleet.cli("snapshot", "1764979200000-000000", "-o", str(tmp_path / "none.jpg"))
    assert missing.returncode == 2 and "no crop snapshot of object 1764979200000-000000" in missing.stderr
    assert not (tmp_path / "none.jpg").exists()


def test_frame_writes_the_streams_latest_annotated_frame(fleet, tmp_path):
    out = tmp_path / "now.jpg"
    done = fleet.cli("frame", fleet.device_id, "cam0", "-o", str(out), "--max-width", "320")
    assert done.returncode == 0, done.stderr
    image = cv2.imdecode(np.frombuffer(out.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 320


def test_frame_of_an_offline_device_and_of_an_unknown_stream_exit_2(fleet, tmp_path):
    gone = SimAgent(fleet.controller.address, "gone-cam")
    gone.close()  # enrolled, never connected
    out = tmp_path / "f.jpg"
    offline = fleet.cli("frame", gone.device_id, "-o", str(out))
    assert offline.returncode == 2 and f"device {gone.device_id} is not connected" in offline.stderr
    unknown = fleet.cli("frame", fleet.device_id, "cam7", "-o", str(out))
    assert unknown.returncode == 2 and "cam7" in unknown.stderr
    assert not out.exists()
