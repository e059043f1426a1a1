"""What the probe knows about platforms: Jetson modules, Raspberry Pi models, SoCs, CPU cores.

Plain tables, so adding a board is one line. Sources: the device trees in NVIDIA's L4T and the
mainline kernel (model strings, `compatible` part numbers), NVIDIA's JetPack release notes
(L4T -> JetPack), the Arm/NVIDIA MIDR part numbers in /proc/cpuinfo.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class JetsonModule:
    platform: str      # "jetson-orin-nano": the profile's `platform`
    name: str          # "Jetson Orin Nano": for people
    soc: str           # "tegra234"


# Matched in order against the lower-cased device-tree model; more specific names first
# ("orin nano" before "nano", "agx orin" before "agx").
JETSON_MODELS: tuple[tuple[str, JetsonModule], ...] = (
    (r"orin nano", JetsonModule("jetson-orin-nano", "Jetson Orin Nano", "tegra234")),
    (r"orin nx", JetsonModule("jetson-orin-nx", "Jetson Orin NX", "tegra234")),
    (r"agx orin|orin agx", JetsonModule("jetson-agx-orin", "Jetson AGX Orin", "tegra234")),
    (r"thor", JetsonModule("jetson-thor", "Jetson AGX Thor", "tegra264")),
    (r"xavier nx", JetsonModule("jetson-xavier-nx", "Jetson Xavier NX", "tegra194")),
    (r"agx xavier|jetson-agx|xavier", JetsonModule("jetson-agx-xavier", "Jetson AGX Xavier", "tegra194")),
    (r"tx2|quill|lanai", JetsonModule("jetson-tx2", "Jetson TX2", "tegra186")),
    (r"tx1", JetsonModule("jetson-tx1", "Jetson TX1", "tegra210")),
    (r"nano", JetsonModule("jetson-nano", "Jetson Nano", "tegra210")),
)

# Module part numbers in /proc/device-tree/compatible ("nvidia,p3767-0005"), for carrier boards
# whose model string names the carrier, not the module.
JETSON_PARTS: tuple[tuple[str, JetsonModule], ...] = (
    (r"p3767-000[345]", JETSON_MODELS[0][1]),   # Orin Nano 8GB, 4GB, devkit module
    (r"p3767-000[012]", JETSON_MODELS[1][1]),   # Orin NX 16GB, 8GB
    (r"p3701", JETSON_MODELS[2][1]),
    (r"p3668", JETSON_MODELS[4][1]),
    (r"p2888", JETSON_MODELS[5][1]),
    (r"p3310|p3489|p3636", JETSON_MODELS[6][1]),
    (r"p2180", JETSON_MODELS[7][1]),
    (r"p3448", JETSON_MODELS[8][1]),
)


@dataclass(frozen=True)
class TegraSoc:
    gpu_arch: str
    compute_capability: str
    fast_int8: bool
    """TensorRT runs INT8 faster than FP16 here (Volta and later). Maxwell (Nano, TX1) and the
    TX2's Pascal have no INT8 tensor path: an INT8 engine there is no faster, only less accurate."""


TEGRA_SOCS: dict[str, TegraSoc] = {
    "tegra210": TegraSoc("Maxwell", "5.3", False),
    "tegra186": TegraSoc("Pascal", "6.2", False),
    "tegra194": TegraSoc("Volta", "7.2", True),
    "tegra234": TegraSoc("Ampere", "8.7", True),
    "tegra264": TegraSoc("Blackwell", "11.0", True),  # sm_110 from CUDA 13 (sm_101 in CUDA 12.8/12.9)
}

# L4T (Jetson Linux) release -> JetPack. Exact releases first; then by major.minor, then by major.
L4T_TO_JETPACK: dict[str, str] = {
    "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.0": "4.5", "32.5.1": "4.5.1",
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "38.2.0": "7.0",
    "32.7": "4.6.x", "35": "5.1.x", "36": "6.x", "38": "7.x", "32": "4.x",
}


def jetpack_for_l4t(l4t: str) -> str:
    """"36.3.0" -> "6.0"; an unlisted release -> the family ("36.9.1" -> "6.x"); unknown -> ""."""
    parts = l4t.split(".")
    if not parts or not parts[0].isdigit():
        return ""
    full = ".".join((parts + ["0", "0"])[:3])
    for key in (full, ".".join(parts[:2]), parts[0]):
        if key in L4T_TO_JETPACK:
            return L4T_TO_JETPACK[key]
    return ""


def jetson_module(model: str, compatible: list[str]) -> JetsonModule | None:
    """The module from the device-tree model string, else from the part numbers in `compatible`."""
    lowered = model.lower()
    for pattern, module in JETSON_MODELS:
        if re.search(pattern, lowered):
            return module
    joined = " ".join(compatible).lower()
    for pattern, module in JETSON_PARTS:
        if re.search(pattern, joined):
            return module
    return None


# Raspberry Pi board generation -> SoC.
RPI_SOCS = {"3": "bcm2837", "4": "bcm2711", "5": "bcm2712"}
_RPI_MODEL = re.compile(r"raspberry pi (?:compute module |model )?(\d+)", re.IGNORECASE)
_RPI_ZERO2 = re.compile(r"raspberry pi zero 2", re.IGNORECASE)


def rpi_generation(model: str) -> str:
    """"Raspberry Pi 5 Model B Rev 1.0" -> "5"; "Raspberry Pi Compute Module 4 Rev 1.0" -> "4";
    a Zero 2 W (the Pi 3's SoC) -> "3"; not a Pi or unknown -> ""."""
    if _RPI_ZERO2.search(model):
        return "3"
    found = _RPI_MODEL.search(model)
    return found.group(1) if found else ""


# MIDR implementer -> {part -> core name}, as /proc/cpuinfo prints them ("CPU part : 0xd42").
CPU_PARTS: dict[str, dict[str, str]] = {
    "0x41": {  # Arm
        "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
        "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
        "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
        "0xd42": "Cortex-A78AE", "0xd4b": "Cortex-A78C", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
    },
    "0x4e": {"0x003": "Denver 2", "0x004": "Carmel"},  # NVIDIA
}


def arm_core_name(implementer: str, part: str) -> str:
    name = CPU_PARTS.get(implementer.lower(), {}).get(part.lower())
    return name or f"Arm core (implementer {implementer}, part {part})"
