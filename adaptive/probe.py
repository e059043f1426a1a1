"""What machine is this? Platform, module, CPU, memory, GPU, NVIDIA stack versions, power mode,
temperatures, accelerators and cameras, as a `HardwareProfile`.

Reads only files under `root` (default "/"), so tests point it at fixture trees copied from
real devices (tests/data/probe/<platform>/). The one command it runs, `nvidia-smi`, goes
through an injectable runner; under a root other than "/" no command runs unless a runner is
given. Every failed read or parse degrades to "unknown" (identity fields) or empty (things
that may simply be absent: a GPU, a CUDA version); nothing here raises. The readers of each
file (and of nvidia-smi's answer) are in adaptive.readers; this module puts their answers together.

    profile = probe()                       # this machine
    profile = probe("tests/data/probe/jetson-orin-nano", onnxruntime_providers=["CPUExecutionProvider"])
    profile.platform, profile.jetpack_version, profile.max_temperature_c()
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform as _platform
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .platforms import RPI_SOCS, TEGRA_SOCS, jetson_module, rpi_generation
from .readers import (
    UNKNOWN,
    Runner,
    ThermalZone,
    accelerators,
    cameras,
    cuda_version,
    device_tree,
    dpkg_installed,
    hottest_c,
    jetpack_version,
    l4t_version,
    memory_bytes,
    nvidia_smi,
    nvpmodel,
    ort_providers,
    parse_cpuinfo,
    read_text,
    read_thermal_zones,
    system_runner,
    tensorrt_version,
)

logger = logging.getLogger(__name__)


@dataclass
class HardwareProfile:
    platform: str = UNKNOWN
    """"jetson-orin-nano", "jetson-nano", "rpi5", "x86_64-nvidia", "x86_64-cpu", "aarch64-cpu"."""
    platform_class: str = UNKNOWN
    """"jetson", "raspberry-pi", "nvidia-gpu" (a discrete NVIDIA GPU), "cpu" (CPU only)."""
    model: str = UNKNOWN
    """The board as it names itself: device-tree model, else DMI vendor + product."""
    machine: str = ""
    soc: str = ""
    """"tegra234", "bcm2712"; "" on a PC."""
    cpu_model: str = UNKNOWN
    cpu_cores: int = 0
    cpu_governor: str = ""
    memory_bytes: int = 0
    gpu_name: str = ""
    gpu_compute_capability: str = ""
    gpu_memory_bytes: int = 0
    nvidia_driver_version: str = ""
    cuda_version: str = ""
    tensorrt_version: str = ""
    jetpack_version: str = ""
    l4t_version: str = ""
    onnxruntime_providers: list[str] = field(default_factory=list)
    accelerators: list[str] = field(default_factory=list)
    """"/dev/hailo0" (Hailo-8/8L), "/dev/apex_0" (Coral PCIe/M.2), "coral-usb"."""
    runtimes: list[str] = field(default_factory=list)
    """CPU inference runtimes besides onnxruntime that import here: "openvino", "ncnn". A rollout of
    an OpenVINO IR or NCNN artifact targets only devices that report its runtime."""
    openvino_devices: list[str] = field(default_factory=list)
    """What openvino.Core().available_devices names: "CPU", "GPU" (an Intel iGPU), "NPU"."""
    ncnn_vulkan_gpus: int = 0
    cpu_flags: list[str] = field(default_factory=list)
    """Of the CPU's flags, those that decide INT8 speed: avx2, avx512f, avx512_vnni, avx_vnni, amx_int8,
    amx_bf16 (x86); asimd, asimddp, i8mm (ARM). An INT8 model is fast only with VNNI/AMX or dot-product."""
    power_mode: str = ""
    """Jetson nvpmodel mode name ("15W", "MAXN_SUPER"), else the ACPI platform profile; "" when none."""
    power_mode_id: int | None = None
    thermal_zones: list[ThermalZone] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain data (what `edge-agent probe --json` prints)."""
        return asdict(self)

    def to_wire(self) -> dict:
        """The fields of edgefleet.v1.HardwareProfile, the rest as strings in its `extra` map."""
        wire_fields = ("platform", "machine", "cpu_model", "cpu_cores", "memory_bytes", "gpu_name",
                       "gpu_compute_capability", "cuda_version", "tensorrt_version", "jetpack_version",
                       "onnxruntime_providers", "accelerators")
        data = {name: getattr(self, name) for name in wire_fields}
        extra = {"platform_class": self.platform_class, "model": self.model, "soc": self.soc,
                 "cpu_governor": self.cpu_governor, "l4t_version": self.l4t_version,
                 "nvidia_driver_version": self.nvidia_driver_version, "power_mode": self.power_mode,
                 "gpu_memory_bytes": str(self.gpu_memory_bytes or ""), "cameras": ",".join(self.cameras),
                 "runtimes": ",".join(self.runtimes), "openvino_devices": ",".join(self.openvino_devices),
                 "ncnn_vulkan_gpus": str(self.ncnn_vulkan_gpus or ""), "cpu_flags": ",".join(self.cpu_flags),
                 "fingerprint": self.fingerprint()}
        hottest = self.max_temperature_c()
        if hottest is not None:
            extra["temperature_c"] = f"{hottest:.1f}"
        data["extra"] = {k: v for k, v in extra.items() if v}
        return data

    def fingerprint(self) -> str:
        """16 hex digits over what changes inference speed (not temperatures, not cameras):
        a calibration measured under another fingerprint is not reused."""
        keys = ("platform", "model", "soc", "cpu_model", "cpu_cores", "cpu_governor", "gpu_name",
                "gpu_compute_capability", "nvidia_driver_version", "cuda_version", "tensorrt_version",
                "l4t_version", "onnxruntime_providers", "accelerators", "power_mode", "power_mode_id")
        # runtimes and CPU flags count only when present: a profile without them keeps its old fingerprint
        extras = ("runtimes", "openvino_devices", "ncnn_vulkan_gpus", "cpu_flags")
        data = {k: getattr(self, k) for k in keys}
        data.update({k: getattr(self, k) for k in extras if getattr(self, k)})
        data["memory_gib"] = round(self.memory_bytes / 2**30)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def max_temperature_c(self) -> float | None:
        return hottest_c(self.thermal_zones)

    def summary(self) -> str:
        """One line for people: "jetson-orin-nano (NVIDIA Jetson Orin Nano Developer Kit, JetPack ...)"."""
        bits = [self.model] if self.model != UNKNOWN else []
        if self.jetpack_version:
            bits.append(f"JetPack {self.jetpack_version} (L4T {self.l4t_version})")
        if self.gpu_name and self.platform_class != "jetson":
            bits.append(f"{self.gpu_name} (sm {self.gpu_compute_capability or '?'})")
        bits.append(f"{self.cpu_cores} cores, {self.memory_bytes / 2**30:.1f} GiB")
        if self.power_mode:
            bits.append(f"power mode {self.power_mode}")
        return f"{self.platform} ({', '.join(bits)})"


# ---- the probe ----

def probe(root: Path | str = "/", *, run: Runner | None = None,
          onnxruntime_providers: Sequence[str] | None = None,
          runtimes: CpuRuntimes | None = None) -> HardwareProfile:
    """Profile the machine whose files are under `root`.

    run: executes commands (nvidia-smi); default: this machine's when `root` is "/", none otherwise.
    onnxruntime_providers: default: this Python's onnxruntime when `root` is "/", none otherwise.
    runtimes: the OpenVINO and NCNN found; default: this Python's when `root` is "/", none otherwise.
    """
    root = Path(root)
    live = root.resolve() == Path("/")
    profile = HardwareProfile()
    steps = (_probe_cpu, _probe_board, _probe_nvidia, _probe_runtime, _probe_devices)
    if run is None and live:
        run = system_runner
    for step in steps:
        try:
            step(profile, root, live, run)
        except Exception as err:  # noqa: BLE001 - a probe step that breaks leaves its fields unknown
            logger.warning("probe step %s failed: %r", step.__name__, err)
    try:
        if onnxruntime_providers is not None:
            profile.onnxruntime_providers = list(onnxruntime_providers)
        elif live:
            profile.onnxruntime_providers = ort_providers()
    except Exception as err:  # noqa: BLE001 - a broken onnxruntime install reads as "no providers"
        logger.warning("onnxruntime providers unreadable: %r", err)
    found = runtimes if runtimes is not None else (cpu_runtimes() if live else CpuRuntimes())
    profile.runtimes = list(found.names)
    profile.openvino_devices = list(found.openvino_devices)
    profile.ncnn_vulkan_gpus = found.ncnn_vulkan_gpus
    return profile


@dataclass(frozen=True)
class CpuRuntimes:
    """The CPU runtimes besides onnxruntime, as this Python finds them."""
    names: tuple[str, ...] = ()
    openvino_devices: tuple[str, ...] = ()
    ncnn_vulkan_gpus: int = 0


def cpu_runtimes() -> CpuRuntimes:
    """OpenVINO (with its devices) and NCNN (with its Vulkan GPU count), where they import.
    A runtime that imports but breaks when asked counts as absent (logged)."""
    names: list[str] = []
    devices: tuple[str, ...] = ()
    gpus = 0
    try:
        import openvino

        devices = tuple(openvino.Core().available_devices)
        names.append("openvino")
    except Exception as err:  # noqa: BLE001 - absent or broken: the device has no usable OpenVINO
        logger.info("openvino not usable: %r", err)
    try:
        import ncnn

        names.append("ncnn")
        counter = getattr(ncnn, "get_gpu_count", None)
        with native_stderr_to_log("ncnn's Vulkan probe"):  # a GPU-less host's loader prints a line per driver
            gpus = int(counter()) if callable(counter) else 0
    except Exception as err:  # noqa: BLE001 - absent or broken: the device has no usable NCNN
        logger.info("ncnn not usable: %r", err)
    return CpuRuntimes(tuple(names), devices, gpus)


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 meanwhile to the debug log, not the terminal."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to take
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logger.debug("%s wrote: %s", what, " | ".join(text.splitlines()))


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile",
              "asimd", "asimddp", "i8mm")
"""The CPU flags reported: those that decide how fast an INT8 (or any) CPU model runs."""


def cpu_flags(cpuinfo: str) -> list[str]:
    """Of INT8_FLAGS, those in the first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            have = set(value.split())
            return [f for f in INT8_FLAGS if f in have]
    return []


def _probe_cpu(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    cpuinfo = read_text(root, "/proc/cpuinfo")
    info = parse_cpuinfo(cpuinfo)
    profile.cpu_flags = cpu_flags(cpuinfo)
    profile.machine = _platform.machine() if live else info.arch
    profile.cpu_model = info.model
    profile.cpu_cores = info.cores or ((os.cpu_count() or 0) if live else 0)
    profile.memory_bytes = memory_bytes(read_text(root, "/proc/meminfo"))
    profile.cpu_governor = read_text(root, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    profile.model = device_tree(root, "model").strip("\x00\n ") or info.model_line or UNKNOWN
    if profile.model == UNKNOWN:
        vendor = read_text(root, "/sys/class/dmi/id/sys_vendor").strip()
        product = read_text(root, "/sys/class/dmi/id/product_name").strip()
        if vendor and product.lower().startswith(vendor.lower()):
            vendor = ""  # "HP" + "HP EliteDesk 800 G4" names the vendor once
        profile.model = " ".join(p for p in (vendor, product) if p) or UNKNOWN


def _probe_board(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    compatible = [c for c in device_tree(root, "compatible").split("\x00") if c.strip()]
    release = read_text(root, "/etc/nv_tegra_release")
    is_jetson = "jetson" in profile.model.lower() or any(c.startswith("nvidia,tegra") for c in compatible) \
        or bool(release)
    if is_jetson:
        module = jetson_module(profile.model, compatible)
        soc = next((c.split(",", 1)[1] for c in compatible if c.startswith("nvidia,tegra")), "")
        profile.platform_class = "jetson"
        profile.platform = module.platform if module else "jetson"
        profile.soc = soc or (module.soc if module else "")
        tegra = TEGRA_SOCS.get(profile.soc)
        if tegra:
            profile.gpu_name = f"NVIDIA {tegra.gpu_arch} integrated GPU ({profile.soc})"
            profile.gpu_compute_capability = tegra.compute_capability
        profile.power_mode_id, profile.power_mode = nvpmodel(root)
        return
    generation = rpi_generation(profile.model)
    if "raspberry pi" in profile.model.lower() or any(c.startswith("raspberrypi,") for c in compatible):
        profile.platform_class = "raspberry-pi"
        profile.platform = f"rpi{generation}" if generation else "rpi"
        brcm = next((c.split(",", 1)[1] for c in compatible if c.startswith("brcm,bcm")), "")
        profile.soc = brcm or RPI_SOCS.get(generation, "")
    acpi_profile = read_text(root, "/sys/firmware/acpi/platform_profile").strip()
    if acpi_profile:
        profile.power_mode = acpi_profile


def _probe_nvidia(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    if profile.platform_class == "jetson":
        return  # integrated GPU: named from the SoC above; nvidia-smi there reports little
    smi = nvidia_smi(run)
    driver = re.search(r"Kernel Module\s+([\d.]+)", read_text(root, "/proc/driver/nvidia/version"))
    has_gpu = bool(smi) or bool(driver) or (root / "dev/nvidia0").exists()
    if smi:
        profile.gpu_name = str(smi["name"]) or UNKNOWN
        profile.gpu_compute_capability = str(smi["compute_cap"])
        profile.gpu_memory_bytes = int(smi["memory"])
        profile.nvidia_driver_version = str(smi["driver"])
    elif has_gpu:
        profile.gpu_name = UNKNOWN
    if driver and not profile.nvidia_driver_version:
        profile.nvidia_driver_version = driver.group(1)
    if profile.platform_class == UNKNOWN and (profile.machine or has_gpu):
        arch = profile.machine or UNKNOWN
        profile.platform_class = "nvidia-gpu" if has_gpu else "cpu"
        profile.platform = f"{arch}-nvidia" if has_gpu else f"{arch}-cpu"


def _probe_runtime(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    packages = dpkg_installed(read_text(root, "/var/lib/dpkg/status"))
    profile.cuda_version = cuda_version(root)
    profile.tensorrt_version = tensorrt_version(packages, live)
    if profile.platform_class == "jetson":
        profile.l4t_version = l4t_version(read_text(root, "/etc/nv_tegra_release"), packages)
        profile.jetpack_version = jetpack_version(profile.l4t_version, packages)


def _probe_devices(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    profile.thermal_zones = read_thermal_zones(root)
    profile.accelerators = accelerators(root)
    profile.cameras = cameras(root)
