"""Detector backends, registered by key (Frigate's plugin pattern).

Each plugin module defines `BACKEND_KEY`, a pydantic `Config` with `type: Literal[BACKEND_KEY]`
and `extra="forbid"`, and `DetectorClass`. Optional SDKs (onnxruntime, tensorrt, pycuda,
ultralytics) are imported inside the plugin's constructor only, so every plugin registers
here, and a backend that is configured but cannot import fails at start with a clear message.

    detector = create_detector({"type": "onnxruntime", "model": "model.onnx"})
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ..base import Detector
from ..errors import InvalidConfig

# Every module in this package that defines BACKEND_KEY is a plugin (as Frigate's plugins/ folder).
BACKENDS: dict[str, ModuleType] = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "BACKEND_KEY"):
        BACKENDS[_module.BACKEND_KEY] = _module

_configs = tuple(m.Config for m in BACKENDS.values())
# A union of the plugins found, made at run time: a value pydantic reads, not a type mypy can (hence Any).
DetectorConfig: Any = Annotated[Union[_configs], Field(discriminator="type")]  # noqa: UP007 - built at run time
_PLUGIN_OF_CONFIG: dict[type[BaseModel], ModuleType] = {m.Config: m for m in BACKENDS.values()}
_ADAPTER = TypeAdapter(DetectorConfig)


def parse_config(data: dict[str, Any]) -> BaseModel:
    """Validate a detector config (from YAML, flags or the wire) into its backend's model."""
    if not isinstance(data, dict):
        raise InvalidConfig(f"detector config must be a mapping, got {type(data).__name__}")
    if data.get("type") not in BACKENDS:
        raise InvalidConfig(f"detector type {data.get('type')!r} is unknown; known: {sorted(BACKENDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']} (got {e.get('input')!r})"
                             for e in err.errors())
        raise InvalidConfig(f"detector config for {data['type']!r}: {problems}") from err


def create_detector(config: dict[str, Any] | BaseModel) -> Detector:
    """Build (and warm up) the backend a config names."""
    if isinstance(config, dict):
        config = parse_config(config)
    return _PLUGIN_OF_CONFIG[type(config)].DetectorClass(config)  # the plugin its `type` names
