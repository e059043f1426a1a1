"""The model pipeline behind `edgefleet model …`: Darknet or .pt -> ONNX -> manifest -> verify -> TensorRT engine.

Each `cmd_*` function takes plain values, returns data and raises `ModelError`s; it prints
nothing. `add_subcommands(subparsers)` registers the argparse subcommands (`darknet`, `export`,
`manifest`, `verify`, `engine`, `quantize`) whose `func(args)` prints a summary and returns the exit code:
0 ok, 1 the artifact does not match its manifest or this device, 2 any other error.

    edgefleet model darknet yolov3-tiny.cfg yolov3-tiny.weights coco.names --out yolov3-tiny.onnx
    edgefleet model export yolov8n.pt --out-dir models/            # needs the train extra
    edgefleet model verify yolov3-tiny.onnx
    edgefleet model engine yolov8n.onnx --precision int8 --calib-dir frames/ --out yolov8n-int8.engine
    edgefleet model quantize yolov8n.onnx --calib-dir frames/ --format onnx-int8   # INT8 for CPUs
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .darknet import convert_files
from .errors import ArtifactMismatch, BackendUnavailable, IncompatibleArtifact, ModelError, UnsupportedModel
from .manifest import (
    ArtifactManifest,
    DeviceCaps,
    Precision,
    atomic_write_bytes,
    manifest_for_onnx,
    manifest_path,
    probe_device,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from .tensorrt_build import Size, build_engine

logger = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass(frozen=True)
class Written:
    """An artifact and the manifest written beside it."""

    artifact: Path
    manifest_file: Path
    manifest: ArtifactManifest


def cmd_darknet(cfg: Path, weights: Path, names: Path, out: Path, *, fix_known_bugs: bool = True) -> Written:
    """Convert a Darknet cfg + weights (+ names file) to ONNX at `out`, with its manifest."""
    model = convert_files(Path(cfg), Path(weights), Path(names), fix_known_bugs=fix_known_bugs)
    out = Path(out)
    atomic_write_bytes(out, model.SerializeToString())
    return cmd_manifest(out)


def cmd_export(source: Path, out_dir: Path, imgsz: int = 640, *, dynamic: bool = True, nms: bool = False,
               simplify: bool = True, opset: int = 13) -> Written:
    """Export an Ultralytics checkpoint to ONNX with Ultralytics' exporter, checked against torch.

    See `models.export.export_ultralytics`: the export consistency check runs before the file
    and its manifest are published. Needs the train extra (ultralytics, torch).
    """
    from .export import export_ultralytics

    out = export_ultralytics(Path(source), Path(out_dir), imgsz, dynamic=dynamic, opset=opset, nms=nms,
                             simplify=simplify)
    return Written(out, manifest_path(out), read_manifest(out))


def cmd_manifest(path: Path) -> Written:
    """Write (or refresh) the manifest of an existing ONNX file from its metadata and bytes."""
    path = Path(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        raise UnsupportedModel(f"{path}: an engine's manifest is written when it is built "
                               "(`edgefleet model engine`); it cannot be recreated from the engine")
    manifest = manifest_for_onnx(path)
    if manifest_path(path).is_file():
        try:
            old = read_manifest(path)
            changed = [f.name for f in dataclasses.fields(old)
                       if f.name != "created_at" and getattr(old, f.name) != getattr(manifest, f.name)]
            logger.info("refreshing %s; changed: %s", manifest_path(path), ", ".join(changed) or "nothing")
        except ModelError as err:
            logger.info("replacing the unreadable manifest %s (%s)", manifest_path(path), err)
    return Written(path, write_manifest(manifest, path), manifest)


def cmd_verify(path: Path, device: DeviceCaps | None = None) -> ArtifactManifest:
    """Check a file against its manifest (size, sha256) and, if given, a device's capabilities.

    Raises ArtifactMismatch / IncompatibleArtifact (exit code 1) or another ModelError (2).
    """
    return verify_artifact(Path(path), device=device)


def engine_command(onnx_path: Path, out: Path, precision: str, calib_dir: Path | None = None,
                   calib_cache: Path | None = None, batch: tuple[int, int, int] = (1, 1, 1),
                   sizes: tuple[Size, Size, Size] | None = None) -> str:
    """The `edgefleet model engine …` line that builds this engine (to run on the device itself)."""
    words = ["edgefleet", "model", "engine", str(onnx_path), "--precision", precision]
    if calib_dir is not None:
        words += ["--calib-dir", f"{str(calib_dir).rstrip('/')}/"]
    if calib_cache is not None:
        words += ["--calib-cache", str(calib_cache)]
    if batch != (1, 1, 1):
        words += ["--batch", ",".join(map(str, batch))]
    if sizes is not None:
        words += ["--size", ",".join(f"{w}x{h}" for w, h in sizes)]
    words += ["--out", str(out)]
    return " ".join(shlex.quote(w) for w in words)


def cmd_engine(onnx_path: Path, out: Path | None = None, precision: Precision = "fp16", calib_dir: Path | None = None,
               *, calib_cache: Path | None = None, batch: tuple[int, int, int] = (1, 1, 1),
               sizes: tuple[Size, Size, Size] | None = None, timing_cache: Path | None = None,
               workspace_mb: int = 1024, device: int = 0) -> Written:
    """Build a TensorRT engine (+ manifest) from an ONNX on this machine; see `build_engine`.

    Without TensorRT here, fails with the command to run on the device: engines only run on the
    GPU and TensorRT version they were built with, so they are built where they run.
    """
    onnx_path = Path(onnx_path)
    out = Path(out) if out else onnx_path.with_name(f"{onnx_path.stem}-{precision}.engine")
    try:
        manifest = build_engine(onnx_path, out, precision, calibration_images=calib_dir,
                                calibration_cache=calib_cache, batch=batch, sizes=sizes,
                                timing_cache=timing_cache, workspace_mb=workspace_mb, device=device)
    except BackendUnavailable as err:
        command = engine_command(onnx_path, out, precision, calib_dir, calib_cache, batch, sizes)
        raise BackendUnavailable(
            f"cannot build a TensorRT engine here: {err}. Build it on the device that will run it: copy "
            f"{onnx_path} (and {manifest_path(onnx_path).name}{', the calibration frames' if calib_dir else ''}) "
            f"there and run: {command}") from err
    return Written(out, manifest_path(out), manifest)


# ---- argparse ----

def parse_batch(text: str) -> tuple[int, int, int]:
    """"4" -> (1, 4, 4) (up to 4, tuned for 4); "1,2,8" -> (1, 2, 8)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"batch must be N or MIN,OPT,MAX integers, got {text!r}") from err
    if len(parts) == 1:
        return (1, parts[0], parts[0])
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"batch must be N or MIN,OPT,MAX, got {text!r}")
    return (parts[0], parts[1], parts[2])


def parse_sizes(text: str) -> tuple[Size, Size, Size]:
    """"640x480" -> that size only; "320x320,640x640,1280x1280" -> min, opt, max (width x height)."""
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)x(\d+)", part.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"size must be WxH or MIN,OPT,MAX of WxH, got {text!r}")
        sizes.append((int(match[1]), int(match[2])))
    if len(sizes) == 1:
        return (sizes[0],) * 3
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"size must be WxH or MIN,OPT,MAX of WxH, got {text!r}")
    return (sizes[0], sizes[1], sizes[2])


def _fail(command: str, err: ModelError) -> int:
    print(f"edgefleet model {command}: error: {err}", file=sys.stderr)
    return 1 if isinstance(err, (ArtifactMismatch, IncompatibleArtifact)) else 2


def _describe(written: Written) -> str:
    m = written.manifest
    return (f"wrote {written.artifact} ({m.format}, {m.layout}, {m.precision}, {m.input_width}x{m.input_height}, "
            f"{len(m.class_names)} classes, sha256 {m.file_sha256[:12]}) and {written.manifest_file}")


def _run_darknet(args) -> int:
    try:
        print(_describe(cmd_darknet(args.cfg, args.weights, args.names, args.out,
                                    fix_known_bugs=not args.keep_cfg_bugs)))
    except ModelError as err:
        return _fail("darknet", err)
    return 0


def _run_export(args) -> int:
    try:
        print(_describe(cmd_export(args.source, args.out_dir, args.imgsz, dynamic=not args.static, nms=args.nms,
                                   simplify=not args.no_simplify, opset=args.opset)))
    except ModelError as err:
        return _fail("export", err)
    return 0


def _run_manifest(args) -> int:
    try:
        print(_describe(cmd_manifest(args.path)))
    except ModelError as err:
        return _fail("manifest", err)
    return 0


def _run_verify(args) -> int:
    try:
        m = cmd_verify(args.path, probe_device(args.device) if args.device_check else None)
    except ModelError as err:
        return _fail("verify", err)
    print(f"ok: {args.path} matches its manifest ({m.file_size} bytes, sha256 {m.file_sha256})"
          + (" and runs on this device" if args.device_check else ""))
    for line in agreement_lines(m):
        print(line)
    return 0


def agreement_lines(m: ArtifactManifest) -> list[str]:
    """What `verify` adds for a quantized artifact: its runtime, calibration and agreement with its source."""
    lines = []
    if m.labels:
        lines.append("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())))
    if m.calibration:
        c = m.calibration
        lines.append(f"calibration: {c.get('frames')} frames, sha256 {c.get('frames_sha256')}, "
                     f"input {'x'.join(map(str, c.get('input_size', [])))}")
    if m.agreement:
        a = m.agreement
        lines.append(f"agreement with FP32 source on {a.get('frames', 0):.0f} held frames: "
                     f"F1 {a['f1']:.3f} (same-class IoU>=0.5), mean IoU {a['mean_iou']:.3f}, "
                     f"score shift {a['score_shift']:+.3f} (mean |shift| {a.get('score_shift_abs', 0.0):.3f}), "
                     f"{a.get('matches', 0):.0f} matches of {a.get('reference_boxes', 0):.0f} source / "
                     f"{a.get('candidate_boxes', 0):.0f} candidate boxes")
    return lines


def _run_quantize(args) -> int:
    from .quantize import TextProgress, quantize_artifact

    return _built("quantize", lambda: quantize_artifact(
        args.onnx, args.calib_dir, args.format, calib_count=args.calib_count, holdout_dir=args.holdout_dir,
        held_count=args.held_count, out=args.out, input_size=args.size[0] if args.size else None,
        progress=TextProgress("calibration frames")))


def _run_convert(args) -> int:
    from .quantize import convert_artifact

    return _built("convert", lambda: convert_artifact(
        args.onnx, args.held_dir, args.format, held_count=args.held_count, out=args.out,
        input_size=args.size[0] if args.size else None))


def _built(command: str, build) -> int:
    """Run `build` (a models.quantize.Built), print what it wrote and its agreement, or fail naming the input."""
    try:
        built = build()
    except ModelError as err:
        return _fail(command, err)
    print(_describe(Written(built.artifact, built.manifest_file, built.manifest)))
    print("\n".join(agreement_lines(built.manifest)))
    return 0


def _run_engine(args) -> int:
    try:
        written = cmd_engine(args.onnx, args.out, args.precision, args.calib_dir, calib_cache=args.calib_cache,
                             batch=args.batch, sizes=args.size, timing_cache=args.timing_cache,
                             workspace_mb=args.workspace_mb, device=args.device)
    except ModelError as err:
        return _fail("engine", err)
    print(_describe(written))
    return 0


def add_subcommands(subparsers) -> None:
    """Register `darknet`, `export`, `manifest`, `verify`, `engine`, `quantize` and `convert` on an
    argparse subparsers object."""
    p = subparsers.add_parser("darknet", help="convert a Darknet cfg + weights to ONNX, with its manifest")
    p.add_argument("cfg", type=Path, help="Darknet .cfg")
    p.add_argument("weights", type=Path, help="Darknet .weights")
    p.add_argument("names", type=Path, help="class names, one per line")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--keep-cfg-bugs", action="store_true",
                   help="do not fix the known yolov3-tiny anchor-mask bug in the cfg")
    p.set_defaults(func=_run_darknet)

    p = subparsers.add_parser("export", help="export an Ultralytics .pt (or model yaml) to ONNX, checked, "
                                             "with its manifest (needs the train extra)")
    p.add_argument("source", type=Path, help="an Ultralytics checkpoint, e.g. yolov8n.pt")
    p.add_argument("--out-dir", type=Path, default=Path("."), help="where the .onnx and its manifest go")
    p.add_argument("--imgsz", type=int, default=640, help="input size the export is made (and checked) at")
    p.add_argument("--static", action="store_true",
                   help="fix batch 1 and --imgsz in the graph (default: dynamic batch and size)")
    p.add_argument("--nms", action="store_true", help="NMS inside the graph: output (N, 300, 6), one image a run")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim's graph simplification")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.set_defaults(func=_run_export)

    p = subparsers.add_parser("manifest", help="write or refresh the manifest of an existing ONNX file")
    p.add_argument("path", type=Path, help="the ONNX file (the manifest goes beside it)")
    p.set_defaults(func=_run_manifest)

    p = subparsers.add_parser("verify", help="check a model file against its manifest (exit 1 on a mismatch)")
    p.add_argument("path", type=Path, help="the artifact (ONNX or engine) with its manifest beside it")
    p.add_argument("--device-check", action="store_true",
                   help="also check that this machine can run it (TensorRT version, GPU, onnxruntime)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index for --device-check")
    p.set_defaults(func=_run_verify)

    p = subparsers.add_parser("engine", help="build a TensorRT engine from an ONNX, on the device that runs it")
    p.add_argument("onnx", type=Path, help="the ONNX model (its manifest is used when present)")
    p.add_argument("--out", type=Path, default=None, help="engine file (default: <onnx stem>-<precision>.engine)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="fp16 (default) is the usual choice; int8 is faster still and needs calibration")
    p.add_argument("--calib-dir", type=Path, default=None,
                   help="int8: folder of frames from the deployment's cameras (a few hundred)")
    p.add_argument("--calib-cache", type=Path, default=None,
                   help="int8: calibration cache to reuse when present, written after calibrating")
    p.add_argument("--batch", type=parse_batch, default=(1, 1, 1), metavar="N|MIN,OPT,MAX",
                   help="images per inference call (default 1)")
    p.add_argument("--size", type=parse_sizes, default=None, metavar="WxH|MIN,OPT,MAX",
                   help="input size(s), multiples of 32 (default: the model's own size)")
    p.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache to load and update")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (default 1024 MiB)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.set_defaults(func=_run_engine)
    _add_quantize(subparsers)
    _add_convert(subparsers)


def _cpu_artifact_parser(subparsers, name: str, help_: str, size_help: str, suffixes: str):
    """`quantize` and `convert`: the FP32 ONNX source, --held-count, --size and --out, the same for both."""
    p = subparsers.add_parser(name, help=help_)
    p.add_argument("onnx", type=Path, help="the FP32 ONNX model (its manifest is used when present)")
    p.add_argument("--held-count", type=int, default=None, help="at most this many held frames (default: all)")
    p.add_argument("--size", type=parse_sizes, default=None, metavar="WxH",
                   help=f"input size to {size_help} at (default: the model's own)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"artifact path (default: <onnx stem>-<format>{suffixes} beside the source; "
                        "a folder: that name in it)")
    return p


def _add_quantize(subparsers) -> None:
    p = _cpu_artifact_parser(subparsers, "quantize", "INT8 for CPUs: quantize an FP32 ONNX on real frames, score "
                             "it against the source, write its manifest", "calibrate and score",
                             ".onnx, .xml or .param")
    p.add_argument("--calib-dir", type=Path, required=True,
                   help="folder of frames from the deployment's cameras; the first --calib-count calibrate, "
                        "the rest are held for agreement")
    p.add_argument("--calib-count", type=int, default=None,
                   help="frames that calibrate (default: three quarters of the folder, or all with --holdout-dir)")
    p.add_argument("--holdout-dir", type=Path, default=None, help="held frames for agreement from another folder")
    p.add_argument("--format", choices=["onnx-int8", "openvino-int8", "ncnn-int8"], default="onnx-int8",
                   help="onnx-int8 (ONNX Runtime static QDQ, default), openvino-int8 (NNCF), ncnn-int8")
    p.set_defaults(func=_run_quantize)


def _add_convert(subparsers) -> None:
    p = _cpu_artifact_parser(subparsers, "convert", "FP32 for another CPU runtime: convert an FP32 ONNX to an "
                             "OpenVINO IR or NCNN model, score it against the source, write its manifest",
                             "convert and score", ".xml or .param")
    p.add_argument("--format", choices=["openvino", "ncnn"], required=True,
                   help="openvino (IR .xml + .bin) or ncnn (.param + .bin + .json), weights kept FP32")
    p.add_argument("--held-dir", type=Path, required=True,
                   help="folder of frames (the deployment's cameras' at best) the conversion is scored on")
    p.set_defaults(func=_run_convert)


__all__ = ["Written", "add_subcommands", "cmd_darknet", "cmd_engine", "cmd_export", "cmd_manifest", "cmd_verify",
           "agreement_lines", "engine_command", "parse_batch", "parse_sizes"]
