"""A `models.darknet` model re-shaped as an Ultralytics YOLOv8 detect export, so that Ultralytics'
own `YOLO(path, task="detect").predict/track` can run the Darknet weights.

`models.darknet.convert` returns raw [yolo] heads that only our `decode_darknet` understands.
Ultralytics' predictor understands one layout: a single output [batch, 4 + nc, A] of boxes
(centre-x, centre-y, width, height in input pixels) and per-class scores, plus the metadata its
exporter writes. `to_ultralytics_layout` appends the Darknet decode to the graph, in ONNX ops:

    centre = (cell + sigmoid(t_xy)) * stride     size = exp(t_wh) * anchor[mask[k]]
    score[c] = sigmoid(objectness) * sigmoid(class logit c)

(the same formulas as `models.yolo.decode_darknet`), so both Ultralytics and our onnxruntime
backend (its "ultralytics" head) decode the same file to the same boxes.

The input size is fixed (the cell grids and anchors become initializers) and so is the batch,
at 1, like an Ultralytics `dynamic=False` export: Ultralytics treats a named batch dimension as a
dynamic export and then letterboxes to the smallest stride multiple ("rect"), which a fixed-size
graph refuses. Our onnxruntime backend runs a larger batch one frame at a time.

The metadata is Ultralytics' (values written with Python's str(), as its exporter does); the
Darknet keys stay under a `darknet_` prefix for provenance. The plain `format` key is gone, so
`models.backends.onnxruntime.read_layout` reads the file as an Ultralytics export.
"""
from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .darknet import FORMAT, OPSET
from .errors import UnsupportedModel

OUTPUT = "output0"  # the name Ultralytics' exporter gives a detect head
DARKNET_KEYS = ("names", "anchors", "masks", "strides", "input_width", "input_height")


def _ultralytics_version() -> str:
    """The installed Ultralytics' version, read without importing it (that would import torch)."""
    try:
        return importlib.metadata.version("ultralytics")
    except importlib.metadata.PackageNotFoundError:  # the conversion itself needs no Ultralytics
        return "unknown"


def _decode_head(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], index: int,
                 head: str, anchors: np.ndarray, grid_w: int, grid_h: int, stride: tuple[float, float],
                 classes: int) -> str:
    """Append the nodes that turn raw head `head` into [1, 4 + classes, len(anchors) * H * W]."""
    a, cells, values = len(anchors), grid_h * grid_w, 5 + classes
    prefix = f"decode{index}_"

    def const(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(array, prefix + name))
        return prefix + name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [prefix + name], name=prefix + name, **attrs))
        return prefix + name

    # [1, a*(5+nc), H, W] -> [1, 5+nc, a*H*W]; column k*H*W + y*W + x is anchor k at cell (x, y).
    x = node("Reshape", [head, const("split_shape", np.array([-1, a, values, cells], np.int64))], "split")
    x = node("Transpose", [x], "transpose", perm=[0, 2, 1, 3])
    x = node("Reshape", [x, const("flat_shape", np.array([-1, values, a * cells], np.int64))], "flat")
    t_xy, t_wh, objectness, logits = (prefix + part for part in ("t_xy", "t_wh", "objectness", "logits"))
    nodes.append(helper.make_node("Split", [x, const("parts", np.array([2, 2, 1, classes], np.int64))],
                                  [t_xy, t_wh, objectness, logits], name=prefix + "parts", axis=1))

    cell = np.arange(cells)
    grid = np.tile(np.stack([cell % grid_w, cell // grid_w]), (1, a)).astype(np.float32)[None]
    anchor_wh = np.repeat(anchors.T.astype(np.float32), cells, axis=1)[None]
    xy = node("Add", [node("Sigmoid", [t_xy], "sigmoid_xy"), const("grid", grid)], "cell_xy")
    xy = node("Mul", [xy, const("stride", np.array(stride, np.float32).reshape(1, 2, 1))], "xy")
    wh = node("Mul", [node("Exp", [t_wh], "exp_wh"), const("anchors", anchor_wh)], "wh")
    scores = node("Mul", [node("Sigmoid", [objectness], "sigmoid_obj"), node("Sigmoid", [logits], "sigmoid_cls")],
                  "scores")
    return node("Concat", [xy, wh, scores], "boxes", axis=1)


def to_ultralytics_layout(model: onnx.ModelProto, input_size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """A new model: `model` (from `models.darknet.convert`) with its heads decoded into one
    Ultralytics detect output `output0` [1, 4 + nc, A], input fixed at `input_size` (width, height;
    default: the size in the metadata) and batch 1, and Ultralytics' metadata.

    Raises UnsupportedModel when `model` lacks the Darknet metadata or `input_size` does not fit
    its strides.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [key for key in DARKNET_KEYS if key not in meta]
    if meta.get("format") != FORMAT or missing:
        raise UnsupportedModel(f"not a models.darknet model: metadata format={meta.get('format')!r} "
                               f"(expected {FORMAT!r}), missing keys {missing}")
    names: list[str] = json.loads(meta["names"])
    anchors = np.asarray(json.loads(meta["anchors"]), np.float32).reshape(-1, 2)
    masks: list[list[int]] = json.loads(meta["masks"])
    strides: list[int] = json.loads(meta["strides"])
    width, height = input_size or (int(meta["input_width"]), int(meta["input_height"]))
    heads = [f"head{i}" for i in range(len(masks))]
    if [o.name for o in model.graph.output] != heads or len(strides) != len(masks) or not names:
        raise UnsupportedModel(f"expected outputs {heads} with strides and class names in the metadata, got "
                               f"outputs {[o.name for o in model.graph.output]}, strides {strides}, "
                               f"{len(names)} names")
    if any(width % s or height % s for s in strides):
        raise UnsupportedModel(f"input size {width}x{height} is not a multiple of the strides {strides}")

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, dims[1].dim_value, height, width), strict=True):
        dim.Clear()
        dim.dim_value = value

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    decoded = [_decode_head(nodes, initializers, i, head, anchors[mask], width // stride, height // stride,
                            (float(stride), float(stride)), len(names))
               for i, (head, mask, stride) in enumerate(zip(heads, masks, strides, strict=True))]
    nodes.append(helper.make_node("Concat", decoded, [OUTPUT], name=OUTPUT, axis=2))
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    boxes = sum(len(mask) * (width // s) * (height // s) for mask, s in zip(masks, strides, strict=True))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 4 + len(names), boxes]))
    del out.opset_import[:]
    out.opset_import.append(helper.make_opsetid("", OPSET))
    out.ir_version = model.ir_version

    del out.metadata_props[:]
    ultralytics_meta = _ultralytics_metadata(graph.name, names, strides, (width, height), dims[1].dim_value)
    helper.set_model_props(out, {**ultralytics_meta, **{f"darknet_{k}": v for k, v in meta.items()}})
    onnx.checker.check_model(out)
    return out


def _ultralytics_metadata(graph_name: str, names: list[str], strides: list[int], input_size: tuple[int, int],
                          channels: int) -> dict[str, str]:
    """The metadata an Ultralytics detect export at batch 1 and a fixed `input_size` (width, height) carries."""
    width, height = input_size
    return {
        "description": f"{graph_name} (Darknet) decoded to the Ultralytics YOLOv8 detect layout by edgefleet",
        "author": "edgefleet",
        "version": _ultralytics_version(),
        "stride": str(max(strides)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([height, width]),
        "names": str(dict(enumerate(names))),
        "args": str({"batch": 1, "half": False, "int8": False, "dynamic": False, "nms": False}),
        "channels": str(channels),
        "end2end": "False",
    }
