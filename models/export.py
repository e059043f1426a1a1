"""Ultralytics checkpoints (or model yamls) -> ONNX, offline, with an export consistency check.

    path = export_ultralytics("yolov8n.pt", "var/models", imgsz=640)   # checked before it is returned

`export_ultralytics` runs Ultralytics' own exporter (simplified with onnxslim, from the train
extra, unless `simplify=False`), then `check_export` runs the ONNX file on ONNX Runtime and the
source model on torch, on the same real frames letterboxed once by `models.yolo.letterbox_batch`,
and compares: raw head outputs for plain exports, matched detections for graphs with NMS inside.
A difference past the tolerance raises `ExportMismatch` with the largest difference found. The
ONNX file is published with its manifest (`models.manifest`), the checkpoint's sha256 as its source.

`build_untrained` makes a checkpoint from a model yaml when no trained weights exist (tests,
benchmarks): see its docstring for what it changes and why.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD
from .errors import ModelError, ModelNotFound
from .manifest import manifest_for_onnx, sha256_file, write_manifest
from .yolo import box_iou, decode_end2end, decode_ultralytics, greedy_pairs, letterbox_batch, nms

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BOX_TOLERANCE_PX = 0.05
"""Largest |difference| allowed between ONNX Runtime and torch in a box coordinate, input pixels."""
SCORE_TOLERANCE = 1e-4
"""Largest |difference| allowed in a class score (0..1)."""
MATCH_MIN_IOU = 0.99
"""Graphs with NMS inside: the least IoU between a box and its torch counterpart."""


class ExportFailed(ModelError):
    """Ultralytics' exporter raised, or wrote no file."""


class ExportMismatch(ModelError):
    """The exported graph does not compute what its source model computes, within the tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    """What `check_export` measured: frames compared and the largest differences seen."""

    frames: int
    max_box_diff_px: float
    max_score_diff: float
    detections: int = 0
    """Graphs with NMS inside: boxes matched one-to-one (0 for raw outputs)."""
    min_iou: float = 1.0


def sample_frames() -> list[np.ndarray]:
    """bus.jpg and zidane.jpg, the real photos that ship inside the ultralytics package."""
    from ultralytics.utils import ASSETS

    frames = []
    for name in ("bus.jpg", "zidane.jpg"):
        frame = cv2.imread(str(ASSETS / name))
        if frame is None:
            raise ModelNotFound(f"the sample image {ASSETS / name} is missing or unreadable")
        frames.append(frame)
    return frames


def _size(imgsz: int | tuple[int, int]) -> tuple[int, int]:
    """Ultralytics' imgsz (int, or (height, width)) as our (width, height)."""
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return int(width), int(height)


def build_untrained(cfg: str | Path, out_pt: str | Path, *, seed: int = 0, names: list[str] | None = None,
                    calibration_frames: list[np.ndarray] | None = None, passing_fraction: float = 0.01) -> Path:
    """A checkpoint built from a model yaml (e.g. "yolov8n.yaml") whose outputs are usable for tests.

    There are no trained weights here, and a freshly initialised Ultralytics model is degenerate:
    PyTorch's default conv init shrinks activations about 3x per layer, so by the head every
    anchor sees the same (near zero) features and predicts the same box, and Detect's bias init
    (log(5 / nc / (640 / stride)^2)) puts every class score near 1e-5. Parity on such a model
    tests nothing. So, deterministically for a seed, the calibration frames (default
    `sample_frames()`) and the Ultralytics version:
    1. conv weights are redrawn (Kaiming normal), except the DFL's fixed projection;
    2. BatchNorm statistics are recomputed from one train-mode pass over the calibration frames;
    3. the class branch's last convs are scaled and their biases reset, so that `passing_fraction`
       of the anchors (default 1%: about a hundred boxes a frame after NMS, a crowded scene)
       score above 0.25 on the calibration frames and the best one about 0.9.
    The result finds nothing real, but its boxes and scores vary from anchor to anchor and frame
    to frame like a trained model's. `names` (default "0".."nc-1") become the class names.
    """
    import torch

    from .backends.ultralytics import import_ultralytics

    yolo = import_ultralytics(needs_nms=False)
    torch.manual_seed(seed)
    model = yolo(str(cfg), task="detect")
    net = model.model
    head = net.model[-1]
    class_convs = [branch[-1] for branch in head.cv3]
    keep = {id(conv) for conv in class_convs} | {id(getattr(getattr(head, "dfl", None), "conv", None))}
    _redraw_conv_weights(net, keep, seed)
    batch, _ = letterbox_batch(calibration_frames or sample_frames(), (640, 640))
    best = _best_class_logits(net, class_convs, batch)
    scale, bias = _spread_class_scores(class_convs, best, passing_fraction)
    nc = len(class_convs[0].bias)
    net.names = {i: str(n) for i, n in enumerate(names)} if names else {i: str(i) for i in range(nc)}
    if len(net.names) != nc:
        raise ModelError(f"{cfg} has {nc} classes but {len(net.names)} names were given")
    out_pt = Path(out_pt)
    out_pt.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out_pt))
    logger.info("built %s from %s (seed %d): class-logit scale %.3g, bias %.3g", out_pt, cfg, seed, scale, bias)
    return out_pt


def _redraw_conv_weights(net: torch.nn.Module, keep: set[int], seed: int) -> None:
    """Step 1 of `build_untrained`: every Conv2d not in `keep` (by id) gets Kaiming-normal weights."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and id(module) not in keep:
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)


def _best_class_logits(net: torch.nn.Module, class_convs: list, batch: np.ndarray) -> torch.Tensor:
    """Step 2 of `build_untrained`: BatchNorm statistics recomputed from one train-mode pass over
    `batch`; then, in eval mode, the best pre-bias class logit of every anchor (all heads, joined)."""
    import torch

    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: the statistics of exactly these frames
    logits: dict[int, torch.Tensor] = {}
    hooks = [conv.register_forward_hook(lambda mod, _, out, i=i: logits.__setitem__(
        i, (out - mod.bias.view(1, -1, 1, 1)).amax(dim=1).flatten())) for i, conv in enumerate(class_convs)]
    with torch.no_grad():
        net.train()
        net(torch.from_numpy(batch))
        net.eval()
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        net(torch.from_numpy(batch))  # best pre-bias class logit per anchor, with the new statistics
        for hook in hooks:
            hook.remove()
    return torch.cat(list(logits.values()))


def _spread_class_scores(class_convs: list, best: torch.Tensor, passing_fraction: float) -> tuple[float, float]:
    """Step 3 of `build_untrained`: scale the class convs and reset their biases so that `passing_fraction`
    of the anchors' `best` logits score above 0.25 and the top one about 0.9; (scale, bias)."""
    import torch

    with torch.no_grad():
        cut, top = torch.quantile(best, torch.tensor([1.0 - passing_fraction, 1.0])).tolist()
        low, high = float(np.log(0.25 / 0.75)), float(np.log(0.9 / 0.1))
        scale = (high - low) / max(top - cut, 1e-6)
        for conv in class_convs:
            conv.weight.mul_(scale)
            conv.bias.fill_(low - scale * cut)
    return scale, low - scale * cut


def export_ultralytics(pt_or_yaml: str | Path, out_dir: str | Path, imgsz: int | tuple[int, int] = 640,
                       dynamic: bool = True, opset: int = 13, nms: bool = False, simplify: bool = True, *,
                       confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                       iou_threshold: float = DEFAULT_IOU_THRESHOLD, max_det: int = 300, seed: int = 0,
                       check: bool = True, check_frames: list[np.ndarray] | None = None) -> Path:
    """Export a checkpoint (or a yaml, built with `seed`) to ONNX in `out_dir`; returns the file.

    imgsz: int or (height, width), as Ultralytics takes it. dynamic: batch, height and width
    free (else fixed at batch 1 and imgsz). nms: NMS inside the graph, output (N, max_det, 6),
    with `confidence_threshold` and `iou_threshold` baked in; Ultralytics unrolls that NMS for
    its export batch of 1, so such a graph handles one frame per run (our backend knows).
    The file is named `<stem>[-nms][-<width>x<height>].onnx` (the size only when fixed) and replaced
    atomically, with its manifest beside it. simplify: fold constants and fuse ops with onnxslim
    (smaller graph, same outputs; the check runs on the simplified file). With `check` (default),
    `check_export` must pass before the file is published.
    """
    source = Path(pt_or_yaml)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = _size(imgsz)
    stem = source.stem + ("-nms" if nms else "") + ("" if dynamic else f"-{width}x{height}")
    target = out_dir / f"{stem}.onnx"
    yolo = _import(needs_nms=nms)
    work = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=out_dir))  # Ultralytics writes beside its source
    try:
        pt = work / f"{source.stem}.pt"
        if source.suffix in (".yaml", ".yml"):
            logger.info("building %s (seed %d)", source, seed)
            build_untrained(source, pt, seed=seed)
        elif not source.is_file():
            raise ModelNotFound(f"{source} does not exist")
        else:
            shutil.copy2(source, pt)
        logger.info("exporting %s to ONNX (imgsz %dx%d, dynamic %s, opset %d, nms %s, simplify %s)", source,
                    width, height, dynamic, opset, nms, simplify)
        try:
            written = yolo(str(pt), task="detect").export(
                format="onnx", imgsz=(height, width), dynamic=dynamic, opset=opset, nms=nms, simplify=simplify,
                batch=1, conf=confidence_threshold, iou=iou_threshold, max_det=max_det, device="cpu",
                verbose=False)
        except Exception as err:  # the exporter re-raises whatever failed inside it
            raise ExportFailed(f"Ultralytics could not export {source} to ONNX: {err}") from err
        if not written or not Path(written).is_file():
            raise ExportFailed(f"Ultralytics' exporter wrote no ONNX file for {source} (returned {written!r})")
        if check:
            result = check_export(written, pt, check_frames, confidence_threshold, iou_threshold)
            logger.info("export check passed on %d frames: max |diff| %.3g px in boxes, %.3g in scores%s",
                        result.frames, result.max_box_diff_px, result.max_score_diff,
                        f", {result.detections} boxes matched (IoU >= {result.min_iou:.4f})" if nms else "")
        manifest = dataclasses.replace(manifest_for_onnx(Path(written)), source_sha256=sha256_file(pt))
        os.replace(written, target)
        write_manifest(manifest, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("exported %s", target)
    return target


def _import(needs_nms: bool = False):
    from .backends.ultralytics import import_ultralytics

    return import_ultralytics(needs_nms)


def check_export(onnx_path: str | Path, source: str | Path, frames: list[np.ndarray] | None = None,
                 confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD, box_tolerance_px: float = BOX_TOLERANCE_PX,
                 score_tolerance: float = SCORE_TOLERANCE) -> ExportCheck:
    """Run `onnx_path` (ONNX Runtime) and its `source` checkpoint (torch) on the same letterboxed frames.

    Raw (N, 4 + nc, A) outputs are compared element by element: boxes within `box_tolerance_px`,
    scores within `score_tolerance`. An (N, K, 6) graph with NMS inside is compared with the
    torch head decoded and NMS'd by `models.yolo` at the same thresholds: equal counts, boxes
    matched one-to-one by class with IoU >= MATCH_MIN_IOU and scores within the tolerance
    (boxes whose score is within the tolerance of the threshold are left out on both sides).
    """
    import onnxruntime as ort
    import torch

    from .backends.onnxruntime import read_layout

    yolo = _import()
    frames = frames or sample_frames()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    layout = read_layout(session.get_modelmeta().custom_metadata_map, session.get_inputs()[0].shape,
                         [o.shape for o in session.get_outputs()], str(onnx_path))
    net = yolo(str(source), task="detect").model.float().eval()
    batch, _ = letterbox_batch(frames, layout.input_size)
    step = layout.max_batch or len(batch)
    name = session.get_inputs()[0].name
    exported = np.concatenate([session.run(None, {name: batch[i:i + step]})[0] for i in range(0, len(batch), step)])
    with torch.no_grad():
        reference = net(torch.from_numpy(batch))
    reference = (reference[0] if isinstance(reference, (tuple, list)) else reference).numpy()
    if layout.head == "end2end":
        return _compare_detections(exported, reference, layout.input_size, confidence_threshold, iou_threshold,
                                   box_tolerance_px, score_tolerance, onnx_path)
    if exported.shape != reference.shape:
        raise ExportMismatch(f"{onnx_path}: output shape {exported.shape}, torch gives {reference.shape}")
    box_diff = float(np.abs(exported[:, :4] - reference[:, :4]).max())
    score_diff = float(np.abs(exported[:, 4:] - reference[:, 4:]).max())
    if box_diff > box_tolerance_px or score_diff > score_tolerance:
        raise ExportMismatch(f"{onnx_path}: ONNX Runtime and torch differ by up to {box_diff:.3g} px in boxes "
                             f"(tolerance {box_tolerance_px}) and {score_diff:.3g} in scores (tolerance "
                             f"{score_tolerance}) on {len(frames)} frames")
    return ExportCheck(len(frames), box_diff, score_diff)


def _compare_detections(exported: np.ndarray, reference: np.ndarray, input_size: tuple[int, int],
                        confidence_threshold: float,
                        iou_threshold: float, box_tolerance_px: float, score_tolerance: float,
                        onnx_path) -> ExportCheck:
    """An (N, K, 6) graph against the torch head (raw, or already (N, K, 6)) decoded by models.yolo."""
    ours = decode_end2end(exported, confidence_threshold)
    if reference.ndim == 3 and reference.shape[2] == 6:
        expected = decode_end2end(reference, confidence_threshold)
    else:
        expected = []
        for xyxy, score, class_id in decode_ultralytics(reference, input_size, confidence_threshold):
            keep = nms(xyxy, score, class_id, iou_threshold)
            expected.append((xyxy[keep], score[keep], class_id[keep]))
    box_diff = score_diff = 0.0
    min_iou, matched = 1.0, 0
    for index, ((a_xyxy, a_score, a_class), (b_xyxy, b_score, b_class)) in enumerate(zip(ours, expected)):
        a = np.abs(a_score - confidence_threshold) >= score_tolerance
        b = np.abs(b_score - confidence_threshold) >= score_tolerance
        a_xyxy, a_score, a_class = a_xyxy[a], a_score[a], a_class[a]
        b_xyxy, b_score, b_class = b_xyxy[b], b_score[b], b_class[b]
        iou = box_iou(a_xyxy, b_xyxy)
        iou[a_class[:, None] != b_class[None, :]] = 0.0
        pairs = greedy_pairs(iou)
        if len(a_score) != len(b_score) or len(pairs) != len(a_score):
            raise ExportMismatch(f"{onnx_path}: frame {index}: the graph keeps {len(a_score)} boxes, torch + "
                                 f"models.yolo {len(b_score)}, {len(pairs)} of them matched by class and IoU")
        if pairs:
            i, j = np.array(pairs).T
            min_iou = min(min_iou, float(iou[i, j].min()))
            box_diff = max(box_diff, float(np.abs(a_xyxy[i] - b_xyxy[j]).max()))
            score_diff = max(score_diff, float(np.abs(a_score[i] - b_score[j]).max()))
            matched += len(pairs)
    if min_iou < MATCH_MIN_IOU or score_diff > score_tolerance:
        raise ExportMismatch(f"{onnx_path}: matched boxes down to IoU {min_iou:.4f} (needs {MATCH_MIN_IOU}), "
                             f"scores differ by up to {score_diff:.3g} (tolerance {score_tolerance}), "
                             f"boxes by up to {box_diff:.3g} px")
    return ExportCheck(len(ours), box_diff, score_diff, matched, min_iou)
