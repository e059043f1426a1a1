"""What machine is this? A first, small probe; the full platform table comes later.

Reads only files under `root` (default "/"), so tests can point it at a fixture tree.
Every failed read degrades to "unknown"; nothing here raises.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class HardwareProfile:
    platform: str = "unknown"
    machine: str = ""
    cpu_model: str = "unknown"
    cpu_cores: int = 0
    memory_bytes: int = 0
    gpu_name: str = ""
    onnxruntime_providers: list[str] = field(default_factory=list)
    accelerators: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _read(root: Path, rel: str) -> str:
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace")
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
            return value.strip()
    return "unknown"


def _memory_bytes(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return 0


def _platform_class(root: Path, machine: str) -> str:
    model = _read(root, "/proc/device-tree/model").strip("\x00\n ").lower()
    if "jetson" in model or _read(root, "/etc/nv_tegra_release"):
        return "jetson"
    if "raspberry pi" in model:
        return "rpi"
    has_nvidia = (root / "dev/nvidia0").exists() or (root / "proc/driver/nvidia/version").exists()
    arch = machine or "unknown"
    return f"{arch}-nvidia" if has_nvidia else f"{arch}-cpu"


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def probe(root: Path | str = "/") -> HardwareProfile:
    root = Path(root)
    machine = platform.machine() if str(root) == "/" else ""
    cpuinfo = _read(root, "/proc/cpuinfo")
    cores = sum(1 for line in cpuinfo.splitlines() if line.startswith("processor"))
    if not cores and str(root) == "/":
        cores = os.cpu_count() or 0
    dev = root / "dev"
    try:
        entries = sorted(p.name for p in dev.iterdir())
    except OSError:
        entries = []
    return HardwareProfile(
        platform=_platform_class(root, machine),
        machine=machine,
        cpu_model=_cpu_model(cpuinfo),
        cpu_cores=cores,
        memory_bytes=_memory_bytes(_read(root, "/proc/meminfo")),
        onnxruntime_providers=_ort_providers(),
        accelerators=[f"/dev/{n}" for n in entries if n.startswith(("hailo", "apex_"))],
        cameras=[f"/dev/{n}" for n in entries if n.startswith("video")],
    )
