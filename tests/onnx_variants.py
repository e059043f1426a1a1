"""Variants of a Darknet-converted ONNX model that misbehave in one precise way, for engine tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def variant_onnx(src: Path, dst: Path, note: str) -> Path:
    """The same model with another doc string: new bytes (a new sha256), same detections."""
    model = onnx.load(str(src))
    model.doc_string = note
    onnx.save(model, dst)
    return dst


def slow_onnx(src: Path, dst: Path, size: int = 384, matmuls: int = 4) -> Path:
    """`src` plus a heavy branch whose result is multiplied by zero and added to head0: same
    detections, many more FLOPs (the branch depends on the input, so nothing folds it away)."""
    model = onnx.load(str(src))
    graph = model.graph
    producer = next(n for n in graph.node if "head0" in n.output)
    producer.output[list(producer.output).index("head0")] = "head0_pre"
    graph.initializer.extend([numpy_helper.from_array(np.eye(size, dtype=np.float32), "heavy_w"),
                              numpy_helper.from_array(np.zeros((), np.float32), "heavy_zero")])
    nodes = [helper.make_node("ReduceMean", ["images"], ["heavy_s"], keepdims=0),
             helper.make_node("Mul", ["heavy_w", "heavy_s"], ["heavy_0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"heavy_{i}", "heavy_w"], [f"heavy_{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"heavy_{matmuls}"], ["heavy_sum"], keepdims=0),
              helper.make_node("Mul", ["heavy_sum", "heavy_zero"], ["heavy_nothing"]),
              helper.make_node("Add", ["head0_pre", "heavy_nothing"], ["head0"])]
    graph.node.extend(nodes)
    onnx.save(model, dst)
    return dst


def warmup_failing_onnx(src: Path, dst: Path) -> Path:
    """Loads fine (dynamic input), fails on its first run: a Reshape to a fixed 32x32 image inside
    meets the warm-up frame at the size the metadata claims (64x64)."""
    model = onnx.load(str(src))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["images_fixed" if i == "images" else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array([1, 3, 32, 32], np.int64), "fixed_shape"))
    graph.node.insert(0, helper.make_node("Reshape", ["images", "fixed_shape"], ["images_fixed"]))
    for prop in model.metadata_props:
        if prop.key in ("input_width", "input_height"):
            prop.value = "64"
    onnx.save(model, dst)
    return dst


def blind_onnx(src: Path, dst: Path) -> Path:
    """`src` that finds nothing: every head's logits become -30 (objectness ~1e-13), whatever the
    frame. On an empty scene it agrees with the real model (both find nothing); on people it does not."""
    model = onnx.load(str(src))
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.zeros((), np.float32), "blind_zero"),
                              numpy_helper.from_array(np.full((), -30.0, np.float32), "blind_logit")])
    for output in [o.name for o in graph.output]:
        producer = next(n for n in graph.node if output in n.output)
        producer.output[list(producer.output).index(output)] = f"{output}_seen"
        graph.node.extend([helper.make_node("Mul", [f"{output}_seen", "blind_zero"], [f"{output}_zero"]),
                           helper.make_node("Add", [f"{output}_zero", "blind_logit"], [output])])
    onnx.save(model, dst)
    return dst
