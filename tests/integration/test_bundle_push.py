"""A model of several files through the controller: `edgefleet artifact push m.xml` bundles the IR
with its .bin; the controller stores a bundle only when it holds exactly the files its signed models
manifest lists. (tests/integration/test_rollout_cpu_formats.py rolls a real one out to real agents.)"""
from __future__ import annotations

import json
import tarfile

import grpc
import pytest

from edgefleet.models.manifest import to_json, write_manifest
from edgefleet.v1 import fleet_pb2

from ..conftest import run_cli
from ..unit.test_bundle import entry, ir_files, tar_of
from .test_rollouts_controller import push


def artifact_cli(controller, *args: str):
    return run_cli("edgefleet.fleet.cli", "artifact", *args, "--controller", controller.address,
                   "--token", controller.operator_token, timeout=60)


def stored(controller) -> list:
    files = controller.controller.deployments.files.root
    return sorted(p.name for p in files.glob("??/*"))


def test_push_bundles_an_ir_with_its_weights_and_the_controller_keeps_the_tar(controller, control, tmp_path):
    xml, manifest = ir_files(tmp_path / "ir")
    write_manifest(manifest, xml)
    proc = artifact_cli(controller, "push", str(xml), "--json")
    assert proc.returncode == 0, proc.stderr
    pushed = json.loads(proc.stdout)["manifest"]
    assert (pushed["format"], pushed["precision"], pushed["name"]) == ("openvino-ir", "int8", "m-int8")
    assert json.loads(pushed["labels"]["models.manifest"])["companions"] == manifest.companions
    assert stored(controller) == [pushed["sha256"]]
    with tarfile.open(controller.controller.deployments.files.path(pushed["sha256"])) as tar:
        assert tar.getnames() == ["m-int8.xml", "m-int8.bin"]
        assert tar.extractfile("m-int8.bin").read() == xml.with_suffix(".bin").read_bytes()
    again = artifact_cli(controller, "push", str(xml), "--json")  # the same files make the same bundle
    assert json.loads(again.stdout)["manifest"]["sha256"] == pushed["sha256"]


def test_push_refuses_an_ir_whose_weights_changed_and_uploads_nothing(controller, control, tmp_path):
    xml, manifest = ir_files(tmp_path / "ir")
    write_manifest(manifest, xml)
    xml.with_suffix(".bin").write_bytes(b"other weights")
    proc = artifact_cli(controller, "push", str(xml))
    assert proc.returncode != 0 and "m-int8.bin: sha256 does not match" in proc.stderr, proc.stderr
    assert not control.ListArtifacts(fleet_pb2.ListArtifactsRequest()).artifacts


@pytest.mark.parametrize("case, why", [
    ("no label", "carries its models manifest in the label 'models.manifest'"),
    ("extra file", "not listed run.sh"),
    ("damaged weights", "m-int8.bin does not hash"),
    ("not a tar", "not a model bundle"),
    ("another format", "its models manifest says 'openvino-ir'"),
])
def test_the_controller_refuses_a_bundle_that_is_not_its_manifests_files(controller, control, tmp_path, case, why):
    xml, manifest = ir_files(tmp_path / "ir")
    files = [(entry("m-int8.xml"), xml.read_bytes()), (entry("m-int8.bin"), xml.with_suffix(".bin").read_bytes())]
    if case == "extra file":
        files.append((entry("run.sh"), b"#!/bin/sh"))
    if case == "damaged weights":
        files[1] = (entry("m-int8.bin"), b"\0" * 10)
    data = tar_of(tmp_path / "b.tar", files).read_bytes() if case != "not a tar" else xml.read_bytes()
    labels = {} if case == "no label" else {"models.manifest": to_json(manifest)}
    with pytest.raises(grpc.RpcError) as err:
        push(control, data, fmt="ncnn" if case == "another format" else "openvino-ir", labels=labels)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in err.value.details(), err.value.details()
    assert not control.ListArtifacts(fleet_pb2.ListArtifactsRequest()).artifacts
    assert stored(controller) == [] and not list(controller.controller.deployments.files.incoming.iterdir())

