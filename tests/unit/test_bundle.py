"""models.bundle and the agent's download of one: a model of several files (an OpenVINO IR, an NCNN
model) as one tar, checked file by file against its models manifest on every side."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.artifacts import ArtifactInfo, Downloader, install_sidecar
from edgefleet.agent.errors import EngineError
from edgefleet.models import bundle
from edgefleet.models.errors import ArtifactMismatch
from edgefleet.models.manifest import ArtifactManifest, read_manifest, to_json

from .test_engines import Store


def ir_files(folder: Path, seed: int = 0) -> tuple[Path, ArtifactManifest]:
    """An IR's two files (random bytes: the bundle does not read them) and a manifest listing them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xml, weights = folder / "m-int8.xml", folder / "m-int8.bin"
    xml.write_bytes(b"<net>" + rng.bytes(300) + b"</net>")
    weights.write_bytes(rng.bytes(5_000))
    manifest = ArtifactManifest(
        format="openvino-ir", layout="darknet-yolo", precision="int8", input_width=416, input_height=416,
        class_names=("person",), file_sha256=hashlib.sha256(xml.read_bytes()).hexdigest(),
        file_size=xml.stat().st_size, created_at="2026-12-01T00:00:00+00:00", producer="test",
        decode_params={"anchors": [[10, 14]], "masks": [[0]]},
        companions={weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()})
    return xml, manifest


def tar_of(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def ncnn_files(folder: Path) -> tuple[Path, ArtifactManifest]:
    """An NCNN model's three files (as models.ncnn_convert names them) and a manifest listing them."""
    xml, manifest = ir_files(folder)
    param = folder / "m.ncnn-int8.param"
    param.write_bytes(b"7767517\n" + xml.read_bytes())
    files = {folder / "m.ncnn-int8.bin": xml.with_suffix(".bin").read_bytes(), folder / "m.ncnn-int8.json": b"{}"}
    for path, data in files.items():
        path.write_bytes(data)
    return param, dataclasses.replace(
        manifest, format="ncnn", file_sha256=hashlib.sha256(param.read_bytes()).hexdigest(),
        file_size=param.stat().st_size, companions={p.name: hashlib.sha256(d).hexdigest() for p, d in files.items()})


def test_an_ncnn_model_bundles_its_three_files(tmp_path):
    param, manifest = ncnn_files(tmp_path / "src")
    tar = bundle.pack(param, manifest, tmp_path / "m.tar")
    assert bundle.check(tar, "ncnn", manifest) == param.name
    primary = bundle.unpack(tar, tmp_path / "out", "ncnn", manifest)
    assert sorted(p.name for p in primary.parent.iterdir()) == ["m.ncnn-int8.bin", "m.ncnn-int8.json",
                                                                 "m.ncnn-int8.param"]
    with pytest.raises(bundle.BundleError, match="one .param file, this one 0"):
        bundle.check(bundle.pack(*ir_files(tmp_path / "ir"), tmp_path / "ir.tar"), "ncnn", manifest)


def test_the_same_files_make_the_same_bundle_and_it_unpacks_whole(tmp_path):
    xml, manifest = ir_files(tmp_path / "src")
    first = bundle.pack(xml, manifest, tmp_path / "a.tar")
    xml.parent.joinpath("m-int8.bin").touch()  # a newer modification time: not in the bundle
    second = bundle.pack(xml, manifest, tmp_path / "b.tar")
    assert first.read_bytes() == second.read_bytes()
    assert bundle.check(first, "openvino-ir", manifest) == "m-int8.xml"
    primary = bundle.unpack(first, tmp_path / "out", "openvino-ir", manifest)
    assert primary == tmp_path / "out" / "m-int8.xml"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m-int8.bin", "m-int8.xml"]
    assert primary.read_bytes() == xml.read_bytes()
    assert bundle.installed(tmp_path / "out", "openvino-ir", manifest) == primary


def entry(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("entries, message", [
    ([(entry("../m-int8.xml"), b"x")], "not a plain file name"),
    ([(entry("sub/m-int8.xml"), b"x")], "not a plain file name"),
    ([(entry(".hidden.xml"), b"x")], "not a plain file name"),
    ([(entry("m-int8.xml", tarfile.SYMTYPE), b"")], "not a regular file"),
    ([(entry("m-int8.xml"), b"x"), (entry("m-int8.xml"), b"y")], "appears twice"),
    ([(entry("a.xml"), b"x"), (entry("b.xml"), b"y")], "one .xml file, this one 2"),
])
def test_what_a_tar_may_carry_and_a_model_folder_must_not_is_refused(tmp_path, entries, message):
    _, manifest = ir_files(tmp_path / "src")
    with pytest.raises(bundle.BundleError, match=message):
        bundle.unpack(tar_of(tmp_path / "bad.tar", entries), tmp_path / "out", "openvino-ir", manifest)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m-int8.xml").exists()


def test_files_the_manifest_does_not_list_or_that_differ_leave_nothing(tmp_path):
    xml, manifest = ir_files(tmp_path / "src")
    weights = xml.with_suffix(".bin").read_bytes()
    extra = tar_of(tmp_path / "extra.tar", [(entry("m-int8.xml"), xml.read_bytes()), (entry("m-int8.bin"), weights),
                                             (entry("run.sh"), b"#!/bin/sh")])
    with pytest.raises(bundle.BundleError, match="not listed run.sh"):
        bundle.check(extra, "openvino-ir", manifest)
    missing = tar_of(tmp_path / "missing.tar", [(entry("m-int8.xml"), xml.read_bytes())])
    with pytest.raises(bundle.BundleError, match="missing m-int8.bin"):
        bundle.unpack(missing, tmp_path / "out", "openvino-ir", manifest)
    damaged = tar_of(tmp_path / "damaged.tar", [(entry("m-int8.xml"), xml.read_bytes()),
                                                (entry("m-int8.bin"), weights[:-1] + b"\0")])
    with pytest.raises(bundle.BundleError, match="m-int8.bin does not hash"):
        bundle.check(damaged, "openvino-ir", manifest)
    with pytest.raises(ArtifactMismatch, match="m-int8.bin in the bundle does not hash"):
        bundle.unpack(damaged, tmp_path / "out", "openvino-ir", manifest)
    assert list((tmp_path / "out").iterdir()) == []  # the checked .xml was not left alone either
    with pytest.raises(bundle.BundleError, match="not a model bundle"):
        bundle.check(xml, "openvino-ir", manifest)


def signed_info(tar: Path, manifest: ArtifactManifest, **labels: str) -> ArtifactInfo:
    data = tar.read_bytes()
    return ArtifactInfo(hashlib.sha256(data).hexdigest(), len(data), "m-int8", "openvino-ir", "int8",
                        labels={"models.manifest": to_json(manifest), **labels})


def test_the_agent_downloads_a_bundle_unpacks_it_and_keeps_only_the_model_files(tmp_path):
    xml, manifest = ir_files(tmp_path / "src")
    tar = bundle.pack(xml, manifest, tmp_path / "m-int8.tar")
    store = Store()
    store.add(tar.read_bytes())
    info = signed_info(tar, manifest)
    downloader = Downloader(tmp_path / "artifacts", store.fetch)
    path = downloader.download(info)
    assert path == tmp_path / "artifacts" / info.sha256 / "m-int8.xml" and path.read_bytes() == xml.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["m-int8.bin", "m-int8.xml"]  # the tar is gone
    install_sidecar(path, info)
    assert read_manifest(path) == manifest
    again = Downloader(tmp_path / "artifacts", store.fetch)
    assert again.download(info) == path and again.requests == []  # a replayed deploy fetches nothing
    path.with_suffix(".bin").write_bytes(b"damaged")
    assert again.download(info) == path and again.requests == [0]  # a damaged file: fetched and unpacked again
    assert path.with_suffix(".bin").read_bytes() == xml.with_suffix(".bin").read_bytes()


def test_a_bundle_without_its_models_manifest_or_of_other_files_is_refused(tmp_path):
    xml, manifest = ir_files(tmp_path / "src")
    tar = bundle.pack(xml, manifest, tmp_path / "m-int8.tar")
    store = Store()
    store.add(tar.read_bytes())
    bare = dataclasses.replace(signed_info(tar, manifest), labels={})
    with pytest.raises(EngineError, match="carries its models manifest in the label .models.manifest."):
        Downloader(tmp_path / "a", store.fetch).download(bare)
    _, other = ir_files(tmp_path / "other", seed=1)  # signed with another model's manifest
    with pytest.raises(EngineError, match="bundle this agent cannot install: .*does not hash"):
        Downloader(tmp_path / "b", store.fetch).download(signed_info(tar, other))
    assert not list((tmp_path / "b").glob("*/*.tar")), "a refused bundle is not kept"
