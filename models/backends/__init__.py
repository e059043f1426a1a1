"""Detector backends, registered by key (Frigate's plugin pattern).

Each plugin module defines `BACKEND_KEY`, a pydantic `Config` with `type: Literal[KEY]`,
and `DetectorClass`. Optional SDKs (tensorrt, pycuda, ultralytics) are imported inside the
plugin's constructor only, so a backend that was configured but cannot import fails at
start with a clear message and the others keep working.
"""
from __future__ import annotations

import importlib
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from ..base import Detector
from ..errors import UnsupportedModel

PLUGIN_MODULES = ("onnxrt",)

PLUGINS = {}
for _name in PLUGIN_MODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    PLUGINS[_module.BACKEND_KEY] = _module

DetectorConfig = Annotated[Union[tuple(m.Config for m in PLUGINS.values())], Field(discriminator="type")]
_ADAPTER = TypeAdapter(DetectorConfig)


def parse_config(data: dict):
    """Validate a detector config dict (from YAML, flags or the wire) into its plugin's model."""
    if data.get("type") not in PLUGINS:
        raise UnsupportedModel(f"detector type {data.get('type')!r} is unknown; known: {sorted(PLUGINS)}")
    return _ADAPTER.validate_python(data)


def create_detector(config) -> Detector:
    if isinstance(config, dict):
        config = parse_config(config)
    return PLUGINS[config.type].DetectorClass(config)
