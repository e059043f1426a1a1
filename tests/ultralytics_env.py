"""Ultralytics in tests: offline, nothing installed, settings in a temp folder; one model per session.

tests/conftest.py registers this module as a pytest plugin, so a test asks for its fixtures
(`ultralytics_env`, `ultralytics_models`) by name, without importing them.

Before Ultralytics is first imported, `ultralytics_env` sets YOLO_OFFLINE=1 (no DNS probes, no
usage events), YOLO_AUTOINSTALL=false (a missing requirement fails instead of running pip),
YOLO_CONFIG_DIR=<a session temp folder> (settings.json is not written to the home folder) and
YOLO_VERBOSE=false, and restores them at the end of the session. It then installs the
torchvision NMS shim (tests/torchvision_nms.py; nothing changes where torchvision works) before
`import_ultralytics` checks that `torchvision.ops.nms` runs. The model is yolov8n.yaml built
by `models.export.build_untrained` (seed 0, COCO names; there are no pretrained weights here),
exported twice by `models.export.export_ultralytics` (each export checked against torch).
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SEED = 0
IMGSZ = 640


@dataclass(frozen=True)
class UltralyticsModels:
    pt: Path
    """The checkpoint both exports come from."""
    onnx: Path
    """Dynamic batch and size, raw head (N, 84, A)."""
    onnx_nms: Path
    """NMS inside the graph, (N, 300, 6), thresholds 0.25 / 0.45 baked in."""
    names: list[str]


@pytest.fixture(scope="session")
def ultralytics_env(tmp_path_factory):
    """The environment Ultralytics must see when it is imported; skips without the train extra."""
    if importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("needs the train extra: pip install 'edgefleet[train]'")
    with pytest.MonkeyPatch.context() as patch:
        if "ultralytics" not in sys.modules:  # it reads these once, at import
            patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics-config")))
            patch.setenv("YOLO_OFFLINE", "1")
            patch.setenv("YOLO_AUTOINSTALL", "false")
            patch.setenv("YOLO_VERBOSE", "false")
        from edgefleet.models.backends.ultralytics import import_ultralytics

        from .torchvision_nms import install_torchvision_nms_fallback

        install_torchvision_nms_fallback()
        import_ultralytics()
        yield


@pytest.fixture(scope="session")
def ultralytics_models(ultralytics_env, tmp_path_factory) -> UltralyticsModels:
    from ultralytics.utils import ROOT, YAML

    from edgefleet.models.export import build_untrained, export_ultralytics

    cache = tmp_path_factory.mktemp("ultralytics-models")
    names = [str(n) for n in YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].values()]
    pt = build_untrained("yolov8n.yaml", cache / "yolov8n-untrained.pt", seed=SEED, names=names)
    return UltralyticsModels(
        pt=pt,
        onnx=export_ultralytics(pt, cache, imgsz=IMGSZ, dynamic=True),
        onnx_nms=export_ultralytics(pt, cache, imgsz=IMGSZ, dynamic=True, nms=True),
        names=names,
    )
