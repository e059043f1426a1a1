"""Darknet cfg + weights -> ONNX, for YOLOv3/v4-tiny style networks.

Supported sections: [net], [convolutional] (batch_normalize, leaky/linear/relu),
[maxpool] (incl. Darknet's size=2 stride=1 layer, padded on the right and bottom only),
[route] (one or more layers), [upsample], [shortcut] (linear), [yolo]. BatchNorm is folded
into the convolution. The graph takes `images` [N, 3, H, W] (H, W multiples of 32; dynamic)
and returns one raw tensor per [yolo] head, [N, A*(5+nc), H/stride, W/stride]; decoding
happens in `models.yolo.decode_darknet` with the anchors and masks stored in the metadata.
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

from .errors import UnsupportedModel

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
OPSET = 13
IR_VERSION = 8  # what current onnxruntime releases load
ACTIVATIONS = {"leaky", "linear", "relu", "logistic"}


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def int(self, key: str, default: int | None = None) -> int:
        return int(self._get(key, default))

    def float(self, key: str, default: float | None = None) -> float:
        return float(self._get(key, default))

    def str(self, key: str, default: str | None = None) -> str:
        return str(self._get(key, default))

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self._get(key, None).replace(" ", "").split(",") if v]

    def _get(self, key: str, default):
        if key in self.options:
            return self.options[key]
        if default is None:
            raise UnsupportedModel(f"[{self.kind}] at line {self.line}: missing option {key!r}")
        return default


def parse_cfg(text: str) -> list[Section]:
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
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


def fix_yolov3_tiny_masks(sections: list[Section]) -> list[Section]:
    """The upstream yolov3-tiny.cfg gives its second head `mask = 0,1,2`; the model was trained
    with `1,2,3` (anchor 0 is never used). Fix it only when the file has exactly that bug."""
    heads = [s for s in sections if s.kind == "yolo"]
    if len(heads) == 2 and heads[0].ints("mask") == [3, 4, 5] and heads[1].ints("mask") == [0, 1, 2] \
            and len(heads[1].ints("anchors")) == 12:
        heads[1].options["mask"] = "1,2,3"
        logger.info("fixed the known yolov3-tiny cfg bug: second head mask 0,1,2 -> 1,2,3")
    return sections


@dataclass
class YoloHead:
    output: str
    anchors: list[list[float]]
    mask: list[int]
    classes: int


class _WeightReader:
    def __init__(self, data: bytes):
        major, minor, _revision = np.frombuffer(data[:12], dtype=np.int32)
        header = 20 if (major * 10 + minor) >= 2 else 16
        self.values = np.frombuffer(data[header:], dtype=np.float32)
        self.offset = 0

    def take(self, count: int, what: str) -> np.ndarray:
        if self.offset + count > len(self.values):
            raise UnsupportedModel(
                f"weights file is truncated: {what} needs {count} floats at offset {self.offset}, "
                f"only {len(self.values) - self.offset} left"
            )
        out = self.values[self.offset:self.offset + count]
        self.offset += count
        return out


class _Graph:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def add(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def convert(cfg_text: str, weights: bytes, class_names: list[str], name: str = "darknet") -> onnx.ModelProto:
    """Build the ONNX model; raises UnsupportedModel for layers or files it cannot handle."""
    sections = parse_cfg(cfg_text)
    net = sections[0]
    in_w, in_h, channels = net.int("width"), net.int("height"), net.int("channels", 3)
    reader = _WeightReader(weights)
    g = _Graph()
    layer_outputs: list[str] = []
    layer_channels: list[int] = []
    layer_stride: list[int] = []
    heads: list[YoloHead] = []
    x, c, stride = "images", channels, 1

    for index, sec in enumerate(sections[1:]):
        where = f"layer {index} [{sec.kind}] (cfg line {sec.line})"
        if sec.kind == "convolutional":
            filters, size = sec.int("filters"), sec.int("size")
            conv_stride = sec.int("stride", 1)
            pad = size // 2 if sec.int("pad", 0) else sec.int("padding", 0)
            bn = sec.int("batch_normalize", 0)
            activation = sec.str("activation", "logistic")
            if activation not in ACTIVATIONS or sec.int("groups", 1) != 1:
                raise UnsupportedModel(f"{where}: activation {activation!r}/groups not supported")
            biases = reader.take(filters, f"{where} biases").copy()
            if bn:
                scales = reader.take(filters, f"{where} scales")
                mean = reader.take(filters, f"{where} rolling mean")
                var = reader.take(filters, f"{where} rolling variance")
            kernel = reader.take(filters * c * size * size, f"{where} weights").reshape(filters, c, size, size)
            if bn:  # fold: y = scale * (conv - mean) / sqrt(var + eps) + bias
                factor = scales / np.sqrt(var + 1e-5)
                kernel = kernel * factor[:, None, None, None]
                biases = biases - mean * factor
            x = g.add("Conv", [x, g.const("w", kernel.astype(np.float32)), g.const("b", biases.astype(np.float32))],
                      "conv", kernel_shape=[size, size], strides=[conv_stride, conv_stride], pads=[pad] * 4)
            if activation == "leaky":
                x = g.add("LeakyRelu", [x], "leaky", alpha=0.1)
            elif activation == "relu":
                x = g.add("Relu", [x], "relu")
            elif activation == "logistic":
                x = g.add("Sigmoid", [x], "sigmoid")
            c, stride = filters, stride * conv_stride
        elif sec.kind == "maxpool":
            size, pool_stride = sec.int("size"), sec.int("stride", 1)
            # Darknet pads `padding` (default size-1) in total and starts at -padding/2 rounded toward
            # zero: the size=2 layers pad only on the right and bottom.
            total = sec.int("padding", size - 1)
            begin = total // 2
            x = g.add("MaxPool", [x], "maxpool", kernel_shape=[size, size], strides=[pool_stride, pool_stride],
                      pads=[begin, begin, total - begin, total - begin])
            stride *= pool_stride
        elif sec.kind == "upsample":
            factor = sec.int("stride", 2)
            x = g.add("Resize", [x, "", g.const("scales", np.array([1, 1, factor, factor], np.float32))], "upsample",
                      mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            stride //= factor
        elif sec.kind == "route":
            refs = [r if r >= 0 else index + r for r in sec.ints("layers")]
            if any(not 0 <= r < index for r in refs) or sec.int("groups", 1) != 1:
                raise UnsupportedModel(f"{where}: route layers {sec.options['layers']!r} not supported")
            x = layer_outputs[refs[0]] if len(refs) == 1 else g.add(
                "Concat", [layer_outputs[r] for r in refs], "route", axis=1)
            c = sum(layer_channels[r] for r in refs)
            stride = layer_stride[refs[0]]
        elif sec.kind == "shortcut":
            ref = sec.int("from")
            ref = ref if ref >= 0 else index + ref
            if sec.str("activation", "linear") != "linear":
                raise UnsupportedModel(f"{where}: only linear shortcuts are supported")
            x = g.add("Add", [x, layer_outputs[ref]], "shortcut")
        elif sec.kind == "yolo":
            classes, mask = sec.int("classes"), sec.ints("mask")
            flat = [float(v) for v in sec.options["anchors"].replace(" ", "").split(",") if v]
            anchors = [flat[i:i + 2] for i in range(0, len(flat), 2)]
            if c != len(mask) * (5 + classes):
                raise UnsupportedModel(f"{where}: {c} input channels, expected {len(mask)}*(5+{classes})")
            if sec.float("scale_x_y", 1.0) != 1.0 or sec.int("new_coords", 0):
                raise UnsupportedModel(f"{where}: scale_x_y/new_coords heads are not supported yet")
            heads.append(YoloHead(x, anchors, mask, classes))
        else:
            raise UnsupportedModel(f"{where}: layer type not supported")
        layer_outputs.append(x)
        layer_channels.append(c)
        layer_stride.append(stride)

    if reader.offset != len(reader.values):
        raise UnsupportedModel(
            f"weights file does not match the cfg: {len(reader.values) - reader.offset} floats left over"
        )
    if not heads:
        raise UnsupportedModel("cfg has no [yolo] layer")
    if any(h.anchors != heads[0].anchors or h.classes != heads[0].classes for h in heads):
        raise UnsupportedModel("all [yolo] heads must share anchors and classes")
    if class_names and len(class_names) != heads[0].classes:
        raise UnsupportedModel(f"{len(class_names)} class names for a {heads[0].classes}-class model")

    outputs = []
    for i, head in enumerate(heads):
        g.nodes.append(helper.make_node("Identity", [head.output], [f"head{i}"], name=f"head{i}"))
        outputs.append(helper.make_tensor_value_info(
            f"head{i}", TensorProto.FLOAT, ["batch", len(head.mask) * (5 + head.classes), None, None]))
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        outputs, initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefleet", producer_version=CONVERTER_VERSION)
    model.ir_version = IR_VERSION
    metadata = {
        "format": "darknet-yolo",
        "names": json.dumps(class_names),
        "anchors": json.dumps(heads[0].anchors),
        "masks": json.dumps([h.mask for h in heads]),
        "input_width": str(in_w),
        "input_height": str(in_h),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "converter_version": CONVERTER_VERSION,
    }
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def convert_files(cfg: Path, weights: Path, names: Path, fix_masks: bool = True) -> onnx.ModelProto:
    sections_text = cfg.read_text()
    if fix_masks:
        sections_text = render_cfg(fix_yolov3_tiny_masks(parse_cfg(sections_text)))
    class_names = [n.strip() for n in names.read_text().splitlines() if n.strip()]
    return convert(sections_text, weights.read_bytes(), class_names, name=cfg.stem)


def render_cfg(sections: list[Section]) -> str:
    lines = []
    for sec in sections:
        lines.append(f"[{sec.kind}]")
        lines.extend(f"{k}={v}" for k, v in sec.options.items())
        lines.append("")
    return "\n".join(lines)
