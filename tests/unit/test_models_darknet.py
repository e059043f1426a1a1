"""The Darknet converter on tiny networks built here, against a plain numpy forward pass."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.bundled import FILES, source_files
from models.darknet import convert, fix_yolov3_tiny_masks, parse_cfg, render_cfg
from models.errors import ChecksumMismatch, ModelNotFound, UnsupportedModel

NC, ANCHORS = 2, "4,6, 8,12, 16,24"
HEAD = 2 * (5 + NC)

TINY_CFG = f"""
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
size=1
stride=1
pad=1
filters={HEAD}
activation=linear

[yolo]
mask = 1,2
anchors = {ANCHORS}
classes={NC}
num=3
"""


def weights_for(rng) -> tuple[bytes, dict]:
    p = {
        "b1": rng.normal(size=4), "scale": rng.uniform(0.5, 1.5, 4), "mean": rng.normal(size=4),
        "var": rng.uniform(0.5, 2.0, 4), "w1": rng.normal(size=(4, 3, 3, 3)) * 0.3,
        "b2": rng.normal(size=HEAD), "w2": rng.normal(size=(HEAD, 4, 1, 1)) * 0.3,
    }
    header = np.array([0, 2, 0], np.int32).tobytes() + np.array([0], np.int64).tobytes()
    body = np.concatenate([p["b1"], p["scale"], p["mean"], p["var"], p["w1"].ravel(), p["b2"], p["w2"].ravel()])
    return header + body.astype(np.float32).tobytes(), p


def conv2d(x, w, pad):
    n, c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out


def reference_forward(x, p):
    y = conv2d(x, p["w1"], 1)  # with batch_normalize the bias comes after the norm
    y = (y - p["mean"][None, :, None, None]) / np.sqrt(p["var"][None, :, None, None] + 1e-5)
    y = y * p["scale"][None, :, None, None] + p["b1"][None, :, None, None]
    y = np.where(y > 0, y, 0.1 * y)
    # Darknet's size-2 stride-1 maxpool: the window looks right and down, the edge repeats.
    yp = np.pad(y, ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge")
    y = np.maximum.reduce([yp[:, :, i:i + y.shape[2], j:j + y.shape[3]] for i in (0, 1) for j in (0, 1)])
    return conv2d(y, p["w2"], 0) + p["b2"][None, :, None, None]


@pytest.mark.parametrize("size", [8, 32])
def test_converted_graph_matches_a_numpy_forward_pass(size):
    rng = np.random.default_rng(1)
    weights, params = weights_for(rng)
    model = convert(TINY_CFG, weights, ["cat", "dog"])
    assert model.ir_version == 8 and model.opset_import[0].version == 13
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == "darknet-yolo" and meta["masks"] == "[[1, 2]]" and meta["names"] == '["cat", "dog"]'
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.uniform(size=(2, 3, size, size)).astype(np.float32)
    (out,) = session.run(None, {"images": x})
    assert out.shape == (2, HEAD, size, size)
    np.testing.assert_allclose(out, reference_forward(x.astype(np.float64), params), rtol=1e-4, atol=1e-4)


def test_truncated_weights_name_the_layer():
    weights, _ = weights_for(np.random.default_rng(0))
    with pytest.raises(UnsupportedModel, match=r"truncated: layer 2 \[convolutional\]"):
        convert(TINY_CFG, weights[:-8], ["cat", "dog"])


def test_weights_left_over_mean_the_cfg_does_not_match():
    weights, _ = weights_for(np.random.default_rng(0))
    with pytest.raises(UnsupportedModel, match="left over"):
        convert(TINY_CFG, weights + b"\0" * 16, ["cat", "dog"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ("[convolutional]\nfilters=1\n", "must start with a \\[net\\]"),
        ("[net]\nwidth=32\nheight=32\n[dropout]\nprobability=.5\n", "layer type not supported"),
        ("[net]\nwidth=32\nheight=32\nnot a pair\n", "expected 'key = value'"),
    ],
)
def test_bad_cfgs_are_refused_clearly(cfg, message):
    with pytest.raises(UnsupportedModel, match=message):
        convert(cfg, b"\0" * 20, [])


def test_class_name_count_must_match():
    weights, _ = weights_for(np.random.default_rng(0))
    with pytest.raises(UnsupportedModel, match="3 class names for a 2-class model"):
        convert(TINY_CFG, weights, ["a", "b", "c"])


def test_yolov3_tiny_mask_fix_applies_only_to_the_known_bug():
    cfg = "[net]\nwidth=416\nheight=416\n"
    anchors = "anchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319\n"
    buggy = parse_cfg(cfg + "[yolo]\nmask = 3,4,5\n" + anchors + "[yolo]\nmask = 0,1,2\n" + anchors)
    fixed = [s for s in fix_yolov3_tiny_masks(buggy) if s.kind == "yolo"]
    assert [s.ints("mask") for s in fixed] == [[3, 4, 5], [1, 2, 3]]
    other = parse_cfg(cfg + "[yolo]\nmask = 6,7,8\n" + anchors + "[yolo]\nmask = 0,1,2\n" + anchors)
    assert [s.ints("mask") for s in fix_yolov3_tiny_masks(other) if s.kind == "yolo"] == [[6, 7, 8], [0, 1, 2]]
    assert "mask=1,2,3" in render_cfg(buggy)


def test_bundled_files_are_checked_before_use(tmp_path):
    with pytest.raises(ModelNotFound, match="missing"):
        source_files(tmp_path)
    for name in FILES:
        (tmp_path / name).write_bytes(b"not the real file")
    with pytest.raises(ChecksumMismatch, match="does not match"):
        source_files(tmp_path)
