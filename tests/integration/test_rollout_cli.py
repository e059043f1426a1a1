"""The operator's `edgefleet artifact …`, `rollout …` and `device …` commands, as processes against a
real controller. The devices are scripted Sessions (plumbing: test_rollout_e2e.py runs real agents)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading

import pytest

from edgefleet.models.bundled import default_model
from tests.conftest import ROOT, run_cli, wait_for

from .test_rollouts_controller import ScriptedDevice, State

pytestmark = pytest.mark.data  # the bundled model's weights


def ops(controller, *args: str) -> subprocess.CompletedProcess:
    return run_cli("edgefleet.fleet.cli", *args, "--controller", controller.address,
                   "--token", controller.operator_token, timeout=60)


def test_push_create_pause_resume_abort_and_ping(controller, channel):
    model = default_model()
    pushed = ops(controller, "artifact", "push", str(model), "--name", "bundled", "--json")
    assert pushed.returncode == 0, pushed.stderr
    sha = json.loads(pushed.stdout)["manifest"]["sha256"]
    assert sha == hashlib.sha256(model.read_bytes()).hexdigest()
    listed = ops(controller, "artifact", "list", "--json")
    assert [a["manifest"]["sha256"] for a in json.loads(listed.stdout)] == [sha]

    cams = [ScriptedDevice(channel, name) for name in ("cam-a", "cam-b")]
    for flags, message in ((("--gate-fps-ratio", "0"), "--gate-fps-ratio must be within 0..10 and above 0"),
                           (("--canary", "0"), "--canary must be >= 1, got 0"),
                           (("--waves", "50,20"), "waves_percent must rise strictly")):
        refused = ops(controller, "rollout", "create", "--artifact", sha[:10], *flags)
        assert refused.returncode != 0 and message in refused.stderr, (flags, refused.stderr)
    assert json.loads(ops(controller, "rollout", "list", "--json").stdout) == []

    created = ops(controller, "rollout", "create", "--artifact", sha[:10], "--waves", "100")
    assert created.returncode == 0, created.stderr
    rollout_id = created.stdout.split()[1]
    for verb, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        acted = ops(controller, "rollout", verb, rollout_id, "--reason", f"{verb} from a test")
        assert acted.returncode == 0 and f"{rollout_id} {state}" in acted.stdout, acted.stdout + acted.stderr
    status = json.loads(ops(controller, "rollout", "status", rollout_id, "--json").stdout)
    assert status["state"] == "ABORTED" and "abort from a test" in status["reason"]
    assert {d["device_id"] for d in status["devices"]} == {c.id for c in cams}
    shown = ops(controller, "rollout", "get", rollout_id[:6])  # a unique prefix, as artifacts take
    assert shown.returncode == 0, shown.stderr
    assert f"{rollout_id} aborted" in shown.stdout and "aborted by an operator: abort from a test" in shown.stdout
    assert "wave 1: 0/1 ok (aborted)" in shown.stdout and "wave 2: 0/1 ok (not started)" in shown.stdout
    lines = [line.split() for line in shown.stdout.splitlines()[1:]]
    assert [line[3] for line in lines] == ["pending", "pending"], shown.stdout  # never STATE_UNSPECIFIED
    halted = ops(controller, "rollout", "create", "--artifact", sha[:10], "--on-failure", "halt")
    assert halted.returncode == 0, halted.stderr
    listed = json.loads(ops(controller, "rollout", "list", "--json").stdout)
    assert [r["rollout_id"] for r in listed][1:] == [rollout_id]  # newest first
    assert listed[0]["spec"]["on_failure"] == "HALT"
    missing = ops(controller, "rollout", "get", "ro-nope")
    assert missing.returncode != 0 and "no rollout 'ro-nope'" in missing.stderr

    pinged = ops(controller, "device", "ping", cams[0].id, "--timeout", "1")  # a scripted device never answers
    assert pinged.returncode == 1 and f"{cams[0].id}: no answer: timed out after 1 s" in pinged.stdout
    assert wait_for(lambda: [c for c in cams[0].commands if c.ping], 10, "the ping on the device's Session")


def test_create_wait_follows_the_rollout_to_its_end(controller, channel):
    sha = json.loads(ops(controller, "artifact", "push", str(default_model()), "--json").stdout)["manifest"]["sha256"]
    cams = [ScriptedDevice(channel, name) for name in ("cam-a", "cam-b")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.fleet.cli", "rollout", "create", "--artifact", sha, "--canary", "1", "--wait",
         "--controller", controller.address, "--token", controller.operator_token],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stop = threading.Event()

    def devices_say_active() -> None:  # each device reports ACTIVE for every deploy it gets
        answered: set = set()
        while not stop.wait(0.1):
            for cam in cams:
                for deploy in cam.deploys():
                    if (cam.id, deploy.rollout_id) not in answered:
                        answered.add((cam.id, deploy.rollout_id))
                        cam.report(deploy.rollout_id, sha, State.ACTIVE)

    answering = threading.Thread(target=devices_say_active, daemon=True)
    answering.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        answering.join(5)
    assert proc.returncode == 0, out + err
    assert "succeeded" in out.splitlines()[-1] and "wave 2: 1/1 ok" in out.splitlines()[-1]
