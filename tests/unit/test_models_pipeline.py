"""The `edgefleet model …` functions on real files: Darknet -> ONNX -> manifest -> verify -> engine."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from edgefleet.models.errors import (
    ArtifactMismatch,
    BackendUnavailable,
    InvalidConfig,
    ManifestError,
    ModelNotFound,
    UnsupportedModel,
    WeightsMismatch,
)
from edgefleet.models.manifest import manifest_path, read_manifest
from edgefleet.models.pipeline import (
    add_subcommands,
    cmd_darknet,
    cmd_engine,
    cmd_manifest,
    cmd_verify,
    engine_command,
    parse_batch,
    parse_sizes,
)

from .test_models_darknet import TINY_CFG, tiny_weights

HAS_SDK = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))


@pytest.fixture
def darknet_files(tmp_path):
    """A real (tiny) Darknet cfg, weights and names file."""
    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    (tmp_path / "tiny.weights").write_bytes(tiny_weights()[0])
    (tmp_path / "tiny.names").write_text("cat\ndog\n")
    return tmp_path / "tiny.cfg", tmp_path / "tiny.weights", tmp_path / "tiny.names"


@pytest.fixture
def converted(darknet_files, tmp_path):
    return cmd_darknet(*darknet_files, tmp_path / "out" / "tiny.onnx")


def cli(*argv: str) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="edgefleet model")
    add_subcommands(parser.add_subparsers(dest="model_command", required=True))
    return parser.parse_args(argv), parser


def run(*argv: str) -> int:
    args, _ = cli(*argv)
    return args.func(args)


# ---- darknet -> onnx -> manifest -> verify ----

def test_darknet_to_onnx_with_a_manifest_that_verifies(converted, darknet_files):
    onnx_path, m = converted.artifact, converted.manifest
    assert converted.manifest_file == manifest_path(onnx_path) and converted.manifest_file.is_file()
    assert (m.format, m.layout, m.class_names, m.input_size) == ("onnx", "darknet-yolo", ("cat", "dog"), (32, 32))
    assert m.source_sha256 == hashlib.sha256(darknet_files[1].read_bytes()).hexdigest()
    assert read_manifest(onnx_path) == m
    assert cmd_verify(onnx_path) == m
    ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])  # a real, loadable model
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == ["tiny.onnx", "tiny.onnx.manifest.json"]


def test_one_changed_byte_fails_verification(converted):
    data = bytearray(converted.artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    converted.artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatch, match="sha256 .* does not match its manifest's"):
        cmd_verify(converted.artifact)


def test_manifest_refresh_recreates_the_same_description(converted):
    converted.manifest_file.unlink()
    with pytest.raises(ManifestError, match="has no manifest"):
        cmd_verify(converted.artifact)
    again = cmd_manifest(converted.artifact)
    assert again.manifest.__dict__ | {"created_at": None} == converted.manifest.__dict__ | {"created_at": None}
    converted.manifest_file.write_text("{}")  # a broken manifest is replaced, not fatal
    assert cmd_manifest(converted.artifact).manifest.file_sha256 == converted.manifest.file_sha256


@pytest.mark.parametrize("path, error, message", [
    ("m.engine", UnsupportedModel, "an engine's manifest is written when it is built"),
    ("missing.onnx", ModelNotFound, "does not exist"),
])
def test_manifest_refuses_what_it_cannot_describe(tmp_path, path, error, message):
    if path.endswith(".engine"):
        (tmp_path / path).write_bytes(b"engine")
    with pytest.raises(error, match=message):
        cmd_manifest(tmp_path / path)


def test_darknet_errors_come_through(darknet_files, tmp_path):
    cfg, weights, names = darknet_files
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(WeightsMismatch, match="truncated"):
        cmd_darknet(cfg, weights, names, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# ---- the argparse subcommands, exit codes and output ----

def test_cli_darknet_then_verify(darknet_files, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert run("darknet", *map(str, darknet_files), "--out", str(out)) == 0
    assert f"wrote {out} (onnx, darknet-yolo, fp32, 32x32, 2 classes" in capsys.readouterr().out
    assert run("verify", str(out)) == 0
    assert "ok: " in capsys.readouterr().out
    assert run("verify", str(out), "--device-check") == 0  # onnxruntime is here
    assert "runs on this device" in capsys.readouterr().out
    good = out.read_bytes()
    out.write_bytes(good + b"\0")
    assert run("verify", str(out)) == 1
    assert "edgefleet model verify: error: " in capsys.readouterr().err
    assert run("manifest", str(out)) == 2  # the appended byte breaks the ONNX itself
    assert "is not a readable ONNX file" in capsys.readouterr().err
    out.write_bytes(good)
    manifest_path(out).unlink()
    assert run("verify", str(out)) == 2
    assert "has no manifest" in capsys.readouterr().err
    assert run("manifest", str(out)) == 0
    assert run("verify", str(out)) == 0


def test_cli_engine_arguments_parse():
    args, _ = cli("engine", "yolov8n.onnx", "--precision", "int8", "--calib-dir", "frames/",
                  "--out", "yolov8n-int8.engine", "--batch", "1,2,8", "--size", "320x320,640x640,1280x1280")
    assert (args.onnx, args.out, args.precision, args.calib_dir) == (
        Path("yolov8n.onnx"), Path("yolov8n-int8.engine"), "int8", Path("frames"))
    assert args.batch == (1, 2, 8) and args.size == ((320, 320), (640, 640), (1280, 1280))
    assert args.func.__name__ == "_run_engine"
    defaults, _ = cli("engine", "m.onnx")
    assert (defaults.precision, defaults.batch, defaults.size, defaults.out) == ("fp16", (1, 1, 1), None, None)


def test_every_subcommand_has_help():
    _, parser = cli("manifest", "x.onnx")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(helps) == {"darknet", "export", "manifest", "verify", "engine", "quantize", "convert"}
    assert all(helps.values())


def test_the_cpu_format_choices_are_the_quantizers():
    """The parser lists them without importing models.quantize (cv2, onnx): they must not drift apart."""
    from edgefleet.models.quantize import CONVERT_FORMATS, QUANTIZE_FORMATS

    _, parser = cli("manifest", "x.onnx")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    choices = {name: next(a.choices for a in sub.choices[name]._actions if a.dest == "format")
               for name in ("quantize", "convert")}
    assert (tuple(choices["quantize"]), tuple(choices["convert"])) == (QUANTIZE_FORMATS, CONVERT_FORMATS)


@pytest.mark.parametrize("text, expected", [
    ("1", (1, 1, 1)), ("4", (1, 4, 4)), ("1,2,8", (1, 2, 8)), ("1,2", None), ("a", None),
])
def test_batch_argument(text, expected):
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match="batch must be"):
            parse_batch(text)
    else:
        assert parse_batch(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("640x480", ((640, 480),) * 3), ("320x320,640x640,960x960", ((320, 320), (640, 640), (960, 960))),
    ("640", None), ("640x480,1280x960", None),
])
def test_size_argument(text, expected):
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match="size must be"):
            parse_sizes(text)
    else:
        assert parse_sizes(text) == expected


# ---- engines: built on the device ----

@pytest.mark.parametrize("kwargs, expected", [
    ({"precision": "fp16"}, "edgefleet model engine m.onnx --precision fp16 --out m-fp16.engine"),
    ({"precision": "int8", "calib_dir": Path("frames")},
     "edgefleet model engine m.onnx --precision int8 --calib-dir frames/ --out m-fp16.engine"),
    ({"precision": "int8", "calib_cache": Path("m.calib"), "batch": (1, 2, 4), "sizes": ((320, 320),) * 3},
     ("edgefleet model engine m.onnx --precision int8 --calib-cache m.calib --batch 1,2,4 "
      "--size 320x320,320x320,320x320 --out m-fp16.engine")),
])
def test_the_engine_command_line(kwargs, expected):
    assert engine_command(Path("m.onnx"), Path("m-fp16.engine"), **kwargs) == expected


@pytest.mark.skipif(HAS_SDK, reason="tensorrt and pycuda are installed here")
def test_engine_without_tensorrt_says_what_to_run_on_the_device(converted, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        (frames / f"{i}.jpg").write_bytes(b"frame")  # never read: the build stops at the missing SDK
    with pytest.raises(BackendUnavailable) as info:
        cmd_engine(converted.artifact, tmp_path / "tiny-int8.engine", "int8", frames)
    message = str(info.value)
    assert "tensorrt/pycuda are not installed" in message and "python3-libnvinfer" in message
    assert (f"run: edgefleet model engine {converted.artifact} --precision int8 --calib-dir {frames}/ "
            f"--out {tmp_path / 'tiny-int8.engine'}") in message
    assert not (tmp_path / "tiny-int8.engine").exists()
    assert run("engine", str(converted.artifact)) == 2
    err = capsys.readouterr().err
    assert "edgefleet model engine: error: cannot build a TensorRT engine here" in err
    assert f"--out {converted.artifact.with_name('tiny-fp16.engine')}" in err


def test_engine_argument_mistakes_show_on_any_machine(converted):
    with pytest.raises(InvalidConfig, match="int8 needs calibration images"):
        cmd_engine(converted.artifact, precision="int8")
    with pytest.raises(InvalidConfig, match="multiples of 32, got 48x48"):
        cmd_engine(converted.artifact, sizes=((32, 32), (64, 64), (48, 48)))


def test_the_manifest_is_plain_json(converted):
    data = json.loads(converted.manifest_file.read_text())
    assert data["format"] == "onnx" and data["class_names"] == ["cat", "dog"] and data["manifest_version"] == 1


def test_cli_export_arguments_parse():
    args, _ = cli("export", "yolov8n.pt", "--out-dir", "out", "--imgsz", "416", "--static", "--nms", "--no-simplify")
    assert (args.source, args.out_dir, args.imgsz) == (Path("yolov8n.pt"), Path("out"), 416)
    assert (args.static, args.nms, args.no_simplify, args.opset) == (True, True, True, 13)


@pytest.mark.slow
def test_the_ultralytics_export_carries_a_manifest_naming_its_checkpoint(ultralytics_models):
    for path in (ultralytics_models.onnx, ultralytics_models.onnx_nms):
        manifest = cmd_verify(path)
        assert manifest.source_sha256 == hashlib.sha256(ultralytics_models.pt.read_bytes()).hexdigest()
        assert manifest.class_names[0] == "person" and manifest.opset == 13
    assert read_manifest(ultralytics_models.onnx).layout == "ultralytics"
    assert read_manifest(ultralytics_models.onnx_nms).layout == "end2end"


@pytest.mark.slow
def test_cli_export_of_a_fixed_size_graph(ultralytics_models, tmp_path, capsys):
    assert run("export", str(ultralytics_models.pt), "--out-dir", str(tmp_path), "--imgsz", "320", "--static") == 0
    path = tmp_path / f"{ultralytics_models.pt.stem}-320x320.onnx"
    assert f"wrote {path} (onnx, ultralytics, fp32, 320x320, 80 classes" in capsys.readouterr().out
    manifest = cmd_verify(path)
    assert (manifest.batch_range, manifest.resolution_range) == ((1, 1), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, manifest_path(path).name])  # no leftovers
