"""What a Linux machine says about itself, read from files under a root (and nvidia-smi through a
runner): /proc/cpuinfo and meminfo, the device tree, dpkg's status, the L4T release and JetPack,
CUDA and TensorRT versions, the Jetson power mode, thermal zones, cameras and accelerators.

Each reader degrades to "" / 0 / [] on a missing or unreadable file and raises nothing; `probe`
assembles their answers into a HardwareProfile.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .platforms import arm_core_name, jetpack_for_l4t

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


def hottest_c(zones: Sequence[ThermalZone]) -> float | None:
    """The hottest plausible reading (-40..150 C), ignoring placeholder zones; None when none."""
    temps = [z.temp_c for z in zones if z.temp_c is not None and z.type.lower() not in IGNORED_THERMAL_TYPES
             and -40.0 <= z.temp_c <= 150.0]
    return max(temps) if temps else None


# ---- reading files ----

def read_text(root: Path, rel: str) -> str:
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace")
    except (OSError, ValueError):
        return ""


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def listdir(path: Path) -> list[str]:
    try:
        return sorted((p.name for p in path.iterdir()), key=_natural)
    except OSError:
        return []


def device_tree(root: Path, name: str) -> str:
    for base in ("/proc/device-tree", "/sys/firmware/devicetree/base"):
        text = read_text(root, f"{base}/{name}")
        if text.strip("\x00\n "):
            return text
    return ""


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says."""

    cores: int
    """Its `processor` lines; 0 when it lists none."""
    model: str
    """One core name ("Cortex-A76"), counted names of mixed cores ("2x Denver 2 + 4x Cortex-A57"),
    else its `Hardware` line; UNKNOWN when none."""
    arch: str
    """"x86_64", "aarch64" or "armv7l" as its fields imply; "" when they do not say."""
    model_line: str
    """The Raspberry Pi's board line (`Model`); ""."""


def parse_cpuinfo(text: str) -> CpuInfo:
    """The cores, a CPU model name, the architecture it implies, and the Pi's `Model` line."""
    blocks, first, cores, model_line = _cpuinfo_fields(text)
    names = [name for name in map(_core_name, blocks) if name is not None]
    return CpuInfo(cores, _cpu_model(names, first), _cpu_arch(first), model_line)


def _cpuinfo_fields(text: str) -> tuple[list[dict[str, str]], dict[str, str], int, str]:
    """The blank-line separated blocks of `key: value` lines (keys lowercased), each key's first
    value, the count of `processor` lines, and the `Model` line (capitalized: x86's "model" is a number)."""
    blocks: list[dict[str, str]] = []
    block: dict[str, str] = {}
    first: dict[str, str] = {}
    cores, model_line = 0, ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            blocks.append(block)
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
        elif raw_key.strip() == "Model" and value:  # the Pi's board line
            model_line = value
    return blocks, first, cores, model_line


def _core_name(block: dict[str, str]) -> str | None:
    """A processor block's core: its model name, or an ARM core named from implementer and part
    (where the model name is only "ARMv7 Processor rev 3 (v7l)"); None for a block of no processor."""
    if "processor" not in block:
        return None
    if "model name" in block and not block["model name"].startswith("ARMv"):
        return block["model name"]
    if "cpu part" in block:
        return arm_core_name(block.get("cpu implementer", "?"), block["cpu part"])
    return block.get("model name")


def _cpu_model(names: list[str], first: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    if counts:
        return " + ".join(f"{n}x {name}" for name, n in counts.items())
    return first.get("hardware", UNKNOWN) or UNKNOWN


def _cpu_arch(first: dict[str, str]) -> str:
    if "vendor_id" in first or "flags" in first:
        return "x86_64"
    if "cpu implementer" in first or "features" in first:
        return "aarch64" if first.get("cpu architecture", "8").startswith("8") else "armv7l"
    return ""


def memory_bytes(meminfo: str) -> int:
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


def l4t_version(release: str, packages: dict[str, str]) -> str:
    """"# R36 (release), REVISION: 3.0, ..." -> "36.3.0"; else the nvidia-l4t-core package's version."""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    if found:
        revision = found.group(2).strip(".")
        return f"{found.group(1)}.{revision}" + (".0" if revision.count(".") == 0 else "")
    core = packages.get("nvidia-l4t-core")
    return _upstream(core) if core else ""


def jetpack_version(l4t: str, packages: dict[str, str]) -> str:
    meta = packages.get("nvidia-jetpack")  # "6.0+b106": exact when the meta-package is installed
    if meta:
        return meta.split("+", 1)[0].split("-", 1)[0]
    return jetpack_for_l4t(l4t) if l4t else ""


def cuda_version(root: Path) -> str:
    text = read_text(root, "/usr/local/cuda/version.json")
    if text:
        try:
            version = json.loads(text)["cuda"]["version"]
            if isinstance(version, str):
                return version
        except (ValueError, KeyError, TypeError):
            pass
    found = re.search(r"CUDA Version\s+([\d.]+)", read_text(root, "/usr/local/cuda/version.txt"))
    return found.group(1) if found else ""


TENSORRT_PACKAGES = ("tensorrt", "libnvinfer10", "libnvinfer8", "libnvinfer7")
TENSORRT_WHEELS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


def tensorrt_version(packages: dict[str, str], live: bool) -> str:
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


def nvpmodel(root: Path) -> tuple[int | None, str]:
    """Jetson power mode: the id from /var/lib/nvpmodel/status ("pmode:0002"), else the boot
    default of /etc/nvpmodel.conf; its NAME from the conf's POWER_MODEL lines."""
    conf = read_text(root, "/etc/nvpmodel.conf")
    status = re.search(r"pmode:\s*(\d+)", read_text(root, "/var/lib/nvpmodel/status"))
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
    for name in listdir(root / "sys/class/thermal"):
        if not name.startswith("thermal_zone"):
            continue
        zone_type = read_text(root, f"/sys/class/thermal/{name}/type").strip() or UNKNOWN
        raw = read_text(root, f"/sys/class/thermal/{name}/temp").strip()
        try:
            temp = int(raw) / 1000.0
        except ValueError:
            temp = None
        zones.append(ThermalZone(name, zone_type, temp))
    return zones


def cameras(root: Path) -> list[str]:
    """/dev/video* that are capture devices: not a Pi's codec/ISP engines, not a webcam's
    second (metadata) node (sysfs `index` > 0)."""
    found = []
    for name in listdir(root / "dev"):
        if not re.fullmatch(r"video\d+", name):
            continue
        sysfs = f"/sys/class/video4linux/{name}"
        label = read_text(root, f"{sysfs}/name").strip()
        index = read_text(root, f"{sysfs}/index").strip()
        if (label and _M2M_VIDEO.search(label)) or (index.isdigit() and int(index) > 0):
            continue
        found.append(f"/dev/{name}")
    return found


def accelerators(root: Path) -> list[str]:
    found = [f"/dev/{n}" for n in listdir(root / "dev") if re.fullmatch(r"hailo\d+|apex_\d+", n)]
    for device in listdir(root / "sys/bus/usb/devices"):
        ids = (read_text(root, f"/sys/bus/usb/devices/{device}/idVendor").strip().lower(),
               read_text(root, f"/sys/bus/usb/devices/{device}/idProduct").strip().lower())
        if ids in CORAL_USB_IDS and "coral-usb" not in found:
            found.append("coral-usb")
    return found


def _mib(text: str) -> int:
    found = re.match(r"\s*(\d+)\s*MiB", text)
    return int(found.group(1)) * 2**20 if found else 0


def nvidia_smi(run: Runner | None) -> dict[str, str | int]:
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
    columns: tuple[str, ...] = ("name", "compute_cap", "driver", "memory")
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


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())

