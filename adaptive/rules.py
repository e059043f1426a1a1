"""The static plan table: what to run on a platform when nothing has been measured.

Used when calibration is off (or had no frames, or every candidate failed to run). The first
rule whose `platform` pattern matches the profile's platform wins. A rule prefers formats and
precisions in order, then the smallest (or largest) model, at its input size and detect
interval; `slow` steps apply when the caller knows the fps the loop reached last time (the
runtime controller applies the same idea live, on measured latency).

These are seed values from the issue, kept deliberately conservative; calibration replaces them.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .platforms import TEGRA_SOCS
from .probe import HardwareProfile

ENGINE_FIRST = ("tensorrt-engine", "onnx", "ultralytics-pt")
ONNX_FIRST = ("onnx", "tensorrt-engine", "ultralytics-pt")
INT8_FIRST = ("int8", "fp16", "fp32")
FP16_FIRST = ("fp16", "fp32", "int8")
FP32_FIRST = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class SlowStep:
    below_fps: float
    input_side: int | None = None
    detect_interval: int | None = None


@dataclass(frozen=True)
class StaticRule:
    platform: str                   # fnmatch pattern on HardwareProfile.platform
    input_side: int
    detect_interval: int
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    model: str = "smallest"         # "smallest" | "largest"
    slow: tuple[SlowStep, ...] = ()
    note: str = ""


_JETSON_SLOW = (SlowStep(20.0, detect_interval=3), SlowStep(15.0, input_side=320))

STATIC_RULES: tuple[StaticRule, ...] = (
    StaticRule("jetson-nano", 416, 1, ENGINE_FIRST, FP16_FIRST, "smallest", _JETSON_SLOW,
               "n-model TensorRT FP16 at 416 (Maxwell has no fast INT8); below 20 fps detect every 3rd "
               "frame, below 15 fps drop to 320"),
    StaticRule("jetson-tx[12]", 416, 1, ENGINE_FIRST, FP16_FIRST, "smallest", _JETSON_SLOW,
               "n-model TensorRT FP16 at 416; below 20 fps every 3rd frame, below 15 fps 320"),
    StaticRule("jetson-xavier-nx", 512, 1, ENGINE_FIRST, INT8_FIRST, "smallest",
               (SlowStep(20.0, detect_interval=2), SlowStep(15.0, input_side=416)),
               "n-model TensorRT INT8 at 512"),
    StaticRule("jetson-agx-xavier", 640, 1, ENGINE_FIRST, INT8_FIRST, "smallest",
               (SlowStep(20.0, detect_interval=2), SlowStep(15.0, input_side=512)),
               "n-model TensorRT INT8 at 640"),
    StaticRule("jetson-orin-nano", 640, 1, ENGINE_FIRST, INT8_FIRST, "smallest",
               (SlowStep(20.0, detect_interval=2), SlowStep(15.0, input_side=512)),
               "n-model TensorRT INT8 at 640"),
    StaticRule("jetson-orin-nx", 640, 1, ENGINE_FIRST, INT8_FIRST, "largest", (),
               "largest model, TensorRT INT8 at 640"),
    StaticRule("jetson-agx-orin", 640, 1, ENGINE_FIRST, INT8_FIRST, "largest", (),
               "largest model, TensorRT INT8 at 640"),
    StaticRule("jetson-thor", 640, 1, ENGINE_FIRST, FP16_FIRST, "largest", (),
               "largest model, TensorRT FP16 at 640"),
    StaticRule("jetson*", 416, 1, ENGINE_FIRST, FP16_FIRST, "smallest", _JETSON_SLOW,
               "unknown Jetson module: as a Nano"),
    StaticRule("rpi5", 320, 2, ONNX_FIRST, FP32_FIRST, "smallest",
               (SlowStep(10.0, detect_interval=3), SlowStep(5.0, input_side=256)),
               "ONNX at 320, detect every 2nd frame"),
    StaticRule("rpi*", 320, 3, ONNX_FIRST, FP32_FIRST, "smallest", (SlowStep(5.0, input_side=256),),
               "ONNX at 320, detect every 3rd frame"),
    StaticRule("*-nvidia", 640, 1, ENGINE_FIRST, FP16_FIRST, "largest", (),
               "discrete GPU: largest model at 640"),
    StaticRule("x86_64-cpu", 416, 1, ONNX_FIRST, FP32_FIRST, "smallest",
               (SlowStep(15.0, input_side=320), SlowStep(10.0, detect_interval=2)), "CPU only: ONNX at 416"),
    StaticRule("*", 320, 2, ONNX_FIRST, FP32_FIRST, "smallest", (SlowStep(5.0, detect_interval=3),),
               "CPU only, unknown platform: ONNX at 320, every 2nd frame"),
)

CALIBRATION_SIDES = {
    "jetson": (320, 416, 512, 640),
    "nvidia-gpu": (416, 512, 640),
    "raspberry-pi": (256, 320, 416),
    "cpu": (320, 416, 512),
}
"""Square input sizes a calibration tries per platform class, when the caller names none."""

LADDER_SIDES = (640, 512, 416, 320, 256)


def rule_for(profile: HardwareProfile) -> StaticRule:
    for rule in STATIC_RULES:
        if fnmatch.fnmatchcase(profile.platform, rule.platform):
            return rule
    return STATIC_RULES[-1]


def fast_int8(profile: HardwareProfile) -> bool:
    """Whether INT8 is worth its accuracy loss here: Volta-and-later Jetsons, Turing-and-later GPUs."""
    if profile.platform_class == "jetson":
        soc = TEGRA_SOCS.get(profile.soc)
        return bool(soc and soc.fast_int8)
    try:
        major, minor = (int(p) for p in profile.gpu_compute_capability.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (7, 2)


def calibration_sides(profile: HardwareProfile) -> tuple[int, ...]:
    return CALIBRATION_SIDES.get(profile.platform_class, CALIBRATION_SIDES["cpu"])
