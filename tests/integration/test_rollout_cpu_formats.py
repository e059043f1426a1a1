"""An INT8 OpenVINO IR rolled out the way an operator does it, to real agents on vtest.avi: made by
`edgefleet model quantize`, pushed as one bundle by `edgefleet artifact push`, rolled out by
`edgefleet rollout create`. The agent with OpenVINO unpacks it, shadow-tests it and swaps to it; the
agent without OpenVINO (its Python cannot import it: a stub package raises ImportError first on
its path) is skipped with the reason."""
from __future__ import annotations

import json
import os

import cv2
import pytest

from edgefleet.v1 import fleet_pb2, types_pb2

from ..conftest import read_frames, require_module, run_cli, wait_for
from .test_rollout_e2e import Fleet, engines_of, still_detecting

pytestmark = [pytest.mark.slow, pytest.mark.cpu_extra]

require_module("openvino")


@pytest.fixture(scope="module")
def ir(bundled_model, vtest, tmp_path_factory):
    """`edgefleet model quantize --format openvino-int8` on 40 frames from the end of vtest.avi."""
    frames = tmp_path_factory.mktemp("calib")
    for i, frame in read_frames(vtest, list(range(400, 800, 10))).items():
        cv2.imwrite(str(frames / f"f{i:04d}.jpg"), frame)
    out = tmp_path_factory.mktemp("ir")
    proc = run_cli("edgefleet.fleet.cli", "model", "quantize", str(bundled_model), "--calib-dir", str(frames),
                   "--calib-count", "32", "--format", "openvino-int8", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (xml,) = out.glob("*.xml")
    return xml


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, vtest):
    workdir = tmp_path_factory.mktemp("cpu-formats")
    hidden = workdir / "no-cpu-runtimes"
    for runtime in ("openvino", "ncnn"):
        (hidden / runtime).mkdir(parents=True)
        (hidden / runtime / "__init__.py").write_text(f"raise ImportError('{runtime} is not installed here')\n")
    fleet = Fleet(workdir, vtest)
    try:
        fleet.start_agent("ov-box")
        fleet.start_agent("plain-box", env={"PYTHONPATH": os.pathsep.join(filter(None, (
            str(hidden), os.environ.get("PYTHONPATH"))))})
        fleet.wait_detecting()
        yield fleet
    finally:
        fleet.stop()


def test_an_int8_ir_goes_to_the_agent_with_openvino_and_skips_the_one_without(fleet, ir, bundled_model):
    devices = fleet.devices()
    assert "openvino" in devices["ov-box"].profile.extra["runtimes"].split(",")
    assert "openvino" not in devices["plain-box"].profile.extra.get("runtimes", "").split(",")
    pushed = fleet.cli("artifact", "push", str(ir), "--json")
    assert pushed.returncode == 0, pushed.stderr
    sha = json.loads(pushed.stdout)["manifest"]["sha256"]
    created = fleet.cli("rollout", "create", "--artifact", sha[:12], "--canary", "1", "--waves", "100")
    assert created.returncode == 0, created.stderr
    rollout = fleet.finished(created.stdout.split()[1], timeout=180)
    assert rollout.state == fleet_pb2.SUCCEEDED, rollout.reason
    by_id = {d.device_id: d for d in rollout.devices}
    assert by_id[devices["plain-box"].device_id].reason == "skipped: no openvino on the device"
    assert by_id[devices["ov-box"].device_id].state == types_pb2.DeploymentStatus.ACTIVE
    shown = fleet.cli("rollout", "get", rollout.rollout_id)
    assert "no openvino on the device" in shown.stdout, shown.stdout

    wait_for(lambda: engines_of(fleet)["ov-box"] == sha, 30, "ov-box's plan naming the IR")
    plan = fleet.devices()["ov-box"].plan
    assert (plan.backend, plan.precision) == ("openvino", "int8"), plan
    unpacked = fleet.workdir / "ov-box" / "engines" / sha
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(
        [ir.name, ir.with_suffix(".bin").name, ir.name + ".manifest.json"])  # the bundle's tar is gone
    assert engines_of(fleet)["plain-box"] != sha
    still_detecting(fleet)

    # the operator then sets a model in the device's config: the rolled-out IR stays in use (the
    # configured model is what a rollback returns to), and the plan still names the IR
    done = fleet.cli("device", "config", "set", devices["ov-box"].device_id, "-", "--wait", "60",
                     stdin=f"model: {bundled_model}\n")
    assert done.returncode == 0, done.stderr
    plan = wait_for(lambda: (p := fleet.devices()["ov-box"].plan).reason.startswith("desired config v1") and p,
                    30, "ov-box's plan after the document")
    assert (plan.artifact_sha256, plan.backend, plan.precision) == (sha, "openvino", "int8"), plan
    still_detecting(fleet)
