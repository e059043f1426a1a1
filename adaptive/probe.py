"""What machine is this? Platform, module, CPU, memory, GPU, NVIDIA stack versions, power mode,
temperatures, accelerators and cameras, as a `HardwareProfile`.

Reads only files under `root` (default "/"), so tests point it at fixture trees copied from
real devices (tests/data/probe/<platform>/). The one command it runs, `nvidia-smi`, goes
through an injectable runner; under a root other than "/" no command runs unless a runner is
given. Every failed read or parse degrades to "unknown" (identity fields) or empty (things
that may simply be absent: a GPU, a CUDA version); nothing here raises.

    profile = probe()                       # this machine
    profile = probe("tests/data/probe/jetson-orin-nano", onnxruntime_providers=["CPUExecutionProvider"])
    profile.platform, profile.jetpack_version, profile.max_temperature_c()
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform as _platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .platforms import RPI_SOCS, TEGRA_SOCS, arm_core_name, jetpack_for_l4t, jetson_module, rpi_generation

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"

Runner = Callable[[Sequence[str]], "str | None"]
"""Runs a command (argv) and returns its stdout, or None when it is absent or fails."""

NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                    "--format=csv,noheader")
NVIDIA_SMI_QUERY_OLD = ("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
"""Drivers before 510 do not know the compute_cap field and refuse the whole query."""

IGNORED_THERMAL_TYPES = frozenset({"pmic-die"})
"""Zones whose reading is not a temperature to act on: the Jetson Nano/TX2 "PMIC-Die" zone
reports a fixed 100 C placeholder."""

_M2M_VIDEO = re.compile(r"codec|isp|pispbe|rpivid|hevc|decode|encode|_stats|_config|embedded", re.IGNORECASE)
"""/dev/video* nodes that are memory-to-memory engines (Raspberry Pi codec/ISP), not cameras."""

CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}  # before / after its firmware is loaded


@dataclass
class ThermalZone:
    zone: str                 # "thermal_zone0"
    type: str                 # "cpu-thermal", "GPU-therm", "x86_pkg_temp"
    temp_c: float | None      # None: unreadable


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
        data = {k: getattr(self, k) for k in keys}
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


def hottest_c(zones: Sequence[ThermalZone]) -> float | None:
    """The hottest plausible reading (-40..150 C), ignoring placeholder zones; None when none."""
    temps = [z.temp_c for z in zones if z.temp_c is not None and z.type.lower() not in IGNORED_THERMAL_TYPES
             and -40.0 <= z.temp_c <= 150.0]
    return max(temps) if temps else None


# ---- reading files ----

def _read(root: Path, rel: str) -> str:
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace")
    except (OSError, ValueError):
        return ""


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _listdir(path: Path) -> list[str]:
    try:
        return sorted((p.name for p in path.iterdir()), key=_natural)
    except OSError:
        return []


def _device_tree(root: Path, name: str) -> str:
    for base in ("/proc/device-tree", "/sys/firmware/devicetree/base"):
        text = _read(root, f"{base}/{name}")
        if text.strip("\x00\n "):
            return text
    return ""


def _parse_cpuinfo(text: str) -> dict:
    """cores, a CPU model name, the architecture it implies, and the Pi's `Model` line."""
    cores, names, first, model_line, arch = 0, [], {}, "", ""
    block: dict[str, str] = {}

    def close(block: dict[str, str]) -> None:
        if "processor" not in block:
            return
        if "model name" in block and not block["model name"].startswith("ARMv"):
            names.append(block["model name"])
        elif "cpu part" in block:
            names.append(arm_core_name(block.get("cpu implementer", "?"), block["cpu part"]))
        elif "model name" in block:
            names.append(block["model name"])

    for line in text.splitlines() + [""]:
        if not line.strip():
            close(block)
            block = {}
            continue
        raw_key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = raw_key.strip().lower(), value.strip()
        block[key] = value
        first.setdefault(key, value)
        if key == "processor":
            cores += 1
        elif raw_key.strip() == "Model" and value:  # the Pi's board line; x86's "model" is a number
            model_line = value
    if "vendor_id" in first or "flags" in first:
        arch = "x86_64"
    elif "cpu implementer" in first or "features" in first:
        arch = "aarch64" if first.get("cpu architecture", "8").startswith("8") else "armv7l"
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:
        model = next(iter(counts))
    elif counts:
        model = " + ".join(f"{n}x {name}" for name, n in counts.items())
    else:
        model = first.get("hardware", UNKNOWN) or UNKNOWN
    return {"cores": cores, "model": model, "arch": arch, "model_line": model_line}


def _memory_bytes(meminfo: str) -> int:
    found = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def dpkg_installed(status: str) -> dict[str, str]:
    """Package -> version of what /var/lib/dpkg/status says is installed ("install ok installed")."""
    installed = {}
    for paragraph in re.split(r"\n\s*\n", status):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", paragraph, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields and "Version" in fields:
            installed[fields["Package"]] = fields["Version"]
    return installed


def _upstream(version: str) -> str:
    """Debian version -> upstream: "10.3.0.30-1+cuda12.5" -> "10.3.0.30", "1:2.3-4" -> "2.3"."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version.split("+", 1)[0]


def _l4t_version(release: str, packages: dict[str, str]) -> str:
    """"# R36 (release), REVISION: 3.0, ..." -> "36.3.0"; else the nvidia-l4t-core package's version."""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    if found:
        revision = found.group(2).strip(".")
        return f"{found.group(1)}.{revision}" + (".0" if revision.count(".") == 0 else "")
    core = packages.get("nvidia-l4t-core")
    return _upstream(core) if core else ""


def _jetpack_version(l4t: str, packages: dict[str, str]) -> str:
    meta = packages.get("nvidia-jetpack")  # "6.0+b106": exact when the meta-package is installed
    if meta:
        return meta.split("+", 1)[0].split("-", 1)[0]
    return jetpack_for_l4t(l4t) if l4t else ""


def _cuda_version(root: Path) -> str:
    text = _read(root, "/usr/local/cuda/version.json")
    if text:
        try:
            version = json.loads(text)["cuda"]["version"]
            if isinstance(version, str):
                return version
        except (ValueError, KeyError, TypeError):
            pass
    found = re.search(r"CUDA Version\s+([\d.]+)", _read(root, "/usr/local/cuda/version.txt"))
    return found.group(1) if found else ""


TENSORRT_PACKAGES = ("tensorrt", "libnvinfer10", "libnvinfer8", "libnvinfer7")
TENSORRT_WHEELS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


def _tensorrt_version(packages: dict[str, str], live: bool) -> str:
    for name in TENSORRT_PACKAGES:
        if name in packages:
            return _upstream(packages[name])
    if live:  # a pip-installed TensorRT (x86 venv); read its metadata, never import it here
        for name in TENSORRT_WHEELS:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    return ""


def _nvpmodel(root: Path) -> tuple[int | None, str]:
    """Jetson power mode: the id from /var/lib/nvpmodel/status ("pmode:0002"), else the boot
    default of /etc/nvpmodel.conf; its NAME from the conf's POWER_MODEL lines."""
    conf = _read(root, "/etc/nvpmodel.conf")
    status = re.search(r"pmode:\s*(\d+)", _read(root, "/var/lib/nvpmodel/status"))
    default = re.search(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>", conf)
    found = status or default
    if not found:
        return None, ""
    mode = int(found.group(1))
    names = dict(re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", conf))
    return mode, names.get(str(mode), f"mode {mode}")


def read_thermal_zones(root: Path | str = "/") -> list[ThermalZone]:
    """Every /sys/class/thermal/thermal_zone*: its type and temperature in C (sysfs: millidegrees).
    Cheap enough for the agent's health sampler to call once a second."""
    root = Path(root)
    zones = []
    for name in _listdir(root / "sys/class/thermal"):
        if not name.startswith("thermal_zone"):
            continue
        zone_type = _read(root, f"/sys/class/thermal/{name}/type").strip() or UNKNOWN
        raw = _read(root, f"/sys/class/thermal/{name}/temp").strip()
        try:
            temp = int(raw) / 1000.0
        except ValueError:
            temp = None
        zones.append(ThermalZone(name, zone_type, temp))
    return zones


def _cameras(root: Path) -> list[str]:
    """/dev/video* that are capture devices: not a Pi's codec/ISP engines, not a webcam's
    second (metadata) node (sysfs `index` > 0)."""
    cameras = []
    for name in _listdir(root / "dev"):
        if not re.fullmatch(r"video\d+", name):
            continue
        sysfs = f"/sys/class/video4linux/{name}"
        label = _read(root, f"{sysfs}/name").strip()
        index = _read(root, f"{sysfs}/index").strip()
        if (label and _M2M_VIDEO.search(label)) or (index.isdigit() and int(index) > 0):
            continue
        cameras.append(f"/dev/{name}")
    return cameras


def _accelerators(root: Path) -> list[str]:
    found = [f"/dev/{n}" for n in _listdir(root / "dev") if re.fullmatch(r"hailo\d+|apex_\d+", n)]
    for device in _listdir(root / "sys/bus/usb/devices"):
        ids = (_read(root, f"/sys/bus/usb/devices/{device}/idVendor").strip().lower(),
               _read(root, f"/sys/bus/usb/devices/{device}/idProduct").strip().lower())
        if ids in CORAL_USB_IDS and "coral-usb" not in found:
            found.append("coral-usb")
    return found


def _mib(text: str) -> int:
    found = re.match(r"\s*(\d+)\s*MiB", text)
    return int(found.group(1)) * 2**20 if found else 0


def _nvidia_smi(run: Runner | None) -> dict[str, str | int]:
    """The first GPU from nvidia-smi's CSV query: name, compute capability, driver, memory."""
    if run is None:
        return {}

    def ask(argv: Sequence[str]) -> str | None:
        try:
            return run(argv)
        except Exception as err:  # noqa: BLE001 - an injected runner that breaks means "no answer"
            logger.warning("%s failed: %r", argv[0], err)
            return None

    out = ask(NVIDIA_SMI_QUERY)
    columns = ("name", "compute_cap", "driver", "memory")
    if not out or "," not in out:
        out = ask(NVIDIA_SMI_QUERY_OLD)
        columns = ("name", "driver", "memory")
    if not out or "," not in out:
        return {}
    first = next((line for line in out.splitlines() if line.strip()), "")
    values = dict(zip(columns, (v.strip() for v in first.split(","))))
    if not re.fullmatch(r"\d+\.\d+", values.get("compute_cap", "")):
        values["compute_cap"] = ""
    return {"name": values.get("name", ""), "compute_cap": values["compute_cap"],
            "driver": values.get("driver", ""), "memory": _mib(values.get("memory", ""))}


def system_runner(argv: Sequence[str], timeout_s: float = 5.0) -> str | None:
    """Run a command on this machine; None when it is missing, fails or takes too long."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("%s failed: %s", argv[0], err)
        return None
    return done.stdout if done.returncode == 0 else None


def _ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


# ---- the probe ----

def probe(root: Path | str = "/", *, run: Runner | None = None,
          onnxruntime_providers: Sequence[str] | None = None) -> HardwareProfile:
    """Profile the machine whose files are under `root`.

    run: executes commands (nvidia-smi); default: this machine's when `root` is "/", none otherwise.
    onnxruntime_providers: default: this Python's onnxruntime when `root` is "/", none otherwise.
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
            profile.onnxruntime_providers = _ort_providers()
    except Exception as err:  # noqa: BLE001 - a broken onnxruntime install reads as "no providers"
        logger.warning("onnxruntime providers unreadable: %r", err)
    return profile


def _probe_cpu(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    info = _parse_cpuinfo(_read(root, "/proc/cpuinfo"))
    profile.machine = _platform.machine() if live else info["arch"]
    profile.cpu_model = info["model"]
    profile.cpu_cores = info["cores"] or ((os.cpu_count() or 0) if live else 0)
    profile.memory_bytes = _memory_bytes(_read(root, "/proc/meminfo"))
    profile.cpu_governor = _read(root, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    profile.model = _device_tree(root, "model").strip("\x00\n ") or info["model_line"] or UNKNOWN
    if profile.model == UNKNOWN:
        vendor = _read(root, "/sys/class/dmi/id/sys_vendor").strip()
        product = _read(root, "/sys/class/dmi/id/product_name").strip()
        if vendor and product.lower().startswith(vendor.lower()):
            vendor = ""  # "HP" + "HP EliteDesk 800 G4" names the vendor once
        profile.model = " ".join(p for p in (vendor, product) if p) or UNKNOWN


def _probe_board(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    compatible = [c for c in _device_tree(root, "compatible").split("\x00") if c.strip()]
    release = _read(root, "/etc/nv_tegra_release")
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
        profile.power_mode_id, profile.power_mode = _nvpmodel(root)
        return
    generation = rpi_generation(profile.model)
    if "raspberry pi" in profile.model.lower() or any(c.startswith("raspberrypi,") for c in compatible):
        profile.platform_class = "raspberry-pi"
        profile.platform = f"rpi{generation}" if generation else "rpi"
        brcm = next((c.split(",", 1)[1] for c in compatible if c.startswith("brcm,bcm")), "")
        profile.soc = brcm or RPI_SOCS.get(generation, "")
    acpi_profile = _read(root, "/sys/firmware/acpi/platform_profile").strip()
    if acpi_profile:
        profile.power_mode = acpi_profile


def _probe_nvidia(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    if profile.platform_class == "jetson":
        return  # integrated GPU: named from the SoC above; nvidia-smi there reports little
    smi = _nvidia_smi(run)
    driver = re.search(r"Kernel Module\s+([\d.]+)", _read(root, "/proc/driver/nvidia/version"))
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
    packages = dpkg_installed(_read(root, "/var/lib/dpkg/status"))
    profile.cuda_version = _cuda_version(root)
    profile.tensorrt_version = _tensorrt_version(packages, live)
    if profile.platform_class == "jetson":
        profile.l4t_version = _l4t_version(_read(root, "/etc/nv_tegra_release"), packages)
        profile.jetpack_version = _jetpack_version(profile.l4t_version, packages)


def _probe_devices(profile: HardwareProfile, root: Path, live: bool, run: Runner | None) -> None:
    profile.thermal_zones = read_thermal_zones(root)
    profile.accelerators = _accelerators(root)
    profile.cameras = _cameras(root)
