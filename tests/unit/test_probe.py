"""adaptive.probe on fixture trees copied from real devices (tests/data/probe/<platform>/)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import json_format

from edgefleet.adaptive.platforms import jetpack_for_l4t, jetson_module, rpi_generation
from edgefleet.adaptive.probe import HardwareProfile, native_stderr_to_log, probe
from edgefleet.adaptive.readers import NVIDIA_SMI_QUERY, ThermalZone, hottest_c
from edgefleet.v1 import types_pb2

DATA = Path(__file__).resolve().parents[1] / "data" / "probe"
GiB = 2**30


def recorded(name: str):
    """A runner that answers nvidia-smi's query with a recorded output, and nothing else."""
    text = (DATA / "recorded" / name).read_text()
    calls = []

    def run(argv):
        calls.append(tuple(argv))
        return text if tuple(argv) == NVIDIA_SMI_QUERY else None
    run.calls = calls
    return run


EXPECTED = {
    "jetson-nano": {
        "platform": "jetson-nano", "platform_class": "jetson", "model": "NVIDIA Jetson Nano Developer Kit",
        "machine": "aarch64", "soc": "tegra210", "cpu_model": "Cortex-A57", "cpu_cores": 4,
        "gpu_compute_capability": "5.3", "cuda_version": "10.2.300", "tensorrt_version": "8.2.1.8",
        "l4t_version": "32.7.1", "jetpack_version": "4.6.1", "power_mode": "5W", "power_mode_id": 1,
        "accelerators": [], "cameras": ["/dev/video0"], "hottest": 41.5, "memory_gib": 3.9},
    "jetson-xavier-nx": {
        "platform": "jetson-xavier-nx", "platform_class": "jetson",
        "model": "NVIDIA Jetson Xavier NX Developer Kit", "machine": "aarch64", "soc": "tegra194",
        "cpu_model": "Carmel", "cpu_cores": 6, "gpu_compute_capability": "7.2", "cuda_version": "11.4.315",
        "tensorrt_version": "8.5.2.2", "l4t_version": "35.4.1", "jetpack_version": "5.1.2",
        "power_mode": "MODE_20W_6CORE", "power_mode_id": 8, "accelerators": [], "cameras": [],
        "hottest": 41.0, "memory_gib": 7.4},
    "jetson-orin-nano": {
        "platform": "jetson-orin-nano", "platform_class": "jetson",
        "model": "NVIDIA Jetson Orin Nano Developer Kit", "machine": "aarch64", "soc": "tegra234",
        "cpu_model": "Cortex-A78AE", "cpu_cores": 6, "gpu_compute_capability": "8.7",
        "cuda_version": "12.2.140", "tensorrt_version": "8.6.2.3", "l4t_version": "36.3.0",
        "jetpack_version": "6.0", "power_mode": "15W", "power_mode_id": 0, "accelerators": [],
        "cameras": ["/dev/video0"], "hottest": 48.406, "memory_gib": 7.3},
    "rpi4": {
        "platform": "rpi4", "platform_class": "raspberry-pi", "model": "Raspberry Pi 4 Model B Rev 1.4",
        "machine": "aarch64", "soc": "bcm2711", "cpu_model": "Cortex-A72", "cpu_cores": 4,
        "gpu_compute_capability": "", "cuda_version": "", "tensorrt_version": "", "l4t_version": "",
        "jetpack_version": "", "power_mode": "", "power_mode_id": None, "accelerators": ["coral-usb"],
        "cameras": ["/dev/video0"], "hottest": 51.121, "memory_gib": 3.7},
    "rpi5": {
        "platform": "rpi5", "platform_class": "raspberry-pi", "model": "Raspberry Pi 5 Model B Rev 1.0",
        "machine": "aarch64", "soc": "bcm2712", "cpu_model": "Cortex-A76", "cpu_cores": 4,
        "gpu_compute_capability": "", "cuda_version": "", "tensorrt_version": "", "l4t_version": "",
        "jetpack_version": "", "power_mode": "", "power_mode_id": None, "accelerators": ["/dev/hailo0"],
        "cameras": [], "hottest": 55.3, "memory_gib": 7.9},
    "x86-nvidia": {
        "platform": "x86_64-nvidia", "platform_class": "nvidia-gpu",
        "model": "Dell Inc. Precision 3630 Tower", "machine": "x86_64", "soc": "",
        "cpu_model": "Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz", "cpu_cores": 8,
        "gpu_compute_capability": "8.6", "cuda_version": "12.4.131", "tensorrt_version": "10.0.1.6",
        "l4t_version": "", "jetpack_version": "", "power_mode": "", "power_mode_id": None,
        "accelerators": [], "cameras": ["/dev/video0"], "hottest": 42.0, "memory_gib": 31.2},
    "x86-cpu": {
        "platform": "x86_64-cpu", "platform_class": "cpu", "model": "HP EliteDesk 800 G4 DM 65W",
        "machine": "x86_64", "soc": "", "cpu_model": "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz",
        "cpu_cores": 6, "gpu_compute_capability": "", "cuda_version": "", "tensorrt_version": "",
        "l4t_version": "", "jetpack_version": "", "power_mode": "", "power_mode_id": None,
        "accelerators": [], "cameras": [], "hottest": 41.0, "memory_gib": 15.5},
}


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_fixture_tree_profiles(tree):
    run = recorded("x86-nvidia.nvidia-smi.csv") if tree == "x86-nvidia" else None
    profile = probe(DATA / tree, run=run, onnxruntime_providers=["CPUExecutionProvider"])
    expected = dict(EXPECTED[tree])
    hottest, memory_gib = expected.pop("hottest"), expected.pop("memory_gib")
    got = {key: getattr(profile, key) for key in expected}
    assert got == expected
    assert profile.max_temperature_c() == pytest.approx(hottest)
    assert profile.memory_bytes / GiB == pytest.approx(memory_gib, abs=0.05)
    assert profile.onnxruntime_providers == ["CPUExecutionProvider"]
    assert len(profile.thermal_zones) >= 1


def test_a_fixture_tree_runs_no_command_and_reads_no_live_onnxruntime():
    profile = probe(DATA / "x86-nvidia")
    assert profile.platform == "x86_64-nvidia"            # from /proc/driver/nvidia and /dev/nvidia0
    assert profile.gpu_name == "unknown" and profile.gpu_compute_capability == ""
    assert profile.nvidia_driver_version == "550.54.14"   # from /proc/driver/nvidia/version
    assert profile.onnxruntime_providers == []


def test_nvidia_smi_recorded_output():
    run = recorded("x86-nvidia.nvidia-smi.csv")
    profile = probe(DATA / "x86-nvidia", run=run)
    assert run.calls[0] == NVIDIA_SMI_QUERY
    assert (profile.gpu_name, profile.gpu_compute_capability, profile.nvidia_driver_version,
            profile.gpu_memory_bytes) == ("NVIDIA GeForce RTX 3060", "8.6", "550.54.14", 12288 * 2**20)


def test_nvidia_smi_two_gpus_profiles_the_first():
    profile = probe(DATA / "x86-nvidia", run=recorded("x86-nvidia-2gpu.nvidia-smi.csv"))
    assert (profile.gpu_name, profile.gpu_compute_capability) == ("NVIDIA RTX A4000", "8.6")


def test_nvidia_smi_without_compute_cap_falls_back_to_the_old_query():
    text = (DATA / "recorded" / "old-driver.nvidia-smi.csv").read_text()

    def run(argv):  # a pre-510 driver refuses the compute_cap field
        return None if "compute_cap" in argv[1] else text
    profile = probe(DATA / "x86-nvidia", run=run)
    assert (profile.gpu_name, profile.gpu_compute_capability, profile.nvidia_driver_version) == \
        ("Tesla T4", "", "470.256.02")


def test_jetson_runs_no_nvidia_smi():
    run = recorded("x86-nvidia.nvidia-smi.csv")
    profile = probe(DATA / "jetson-orin-nano", run=run)
    assert run.calls == []
    assert profile.gpu_name == "NVIDIA Ampere integrated GPU (tegra234)"


def test_a_runner_that_raises_degrades_to_unknown():
    def run(argv):
        raise RuntimeError("boom")
    profile = probe(DATA / "x86-cpu", run=run)
    assert profile.platform == "x86_64-cpu" and profile.gpu_name == ""
    assert profile.cpu_model == "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz"


def test_an_empty_root_is_all_unknown(tmp_path):
    profile = probe(tmp_path)
    assert (profile.platform, profile.platform_class, profile.model, profile.cpu_model) == ("unknown",) * 4
    assert (profile.cpu_cores, profile.memory_bytes, profile.thermal_zones, profile.cameras) == (0, 0, [], [])
    assert profile.max_temperature_c() is None


def test_unreadable_and_garbled_files_degrade(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(DATA / "jetson-orin-nano", root)
    (root / "proc/cpuinfo").unlink()
    (root / "proc/cpuinfo").mkdir()                                   # read -> IsADirectoryError
    (root / "proc/meminfo").write_text("MemTotal: lots\n")
    (root / "usr/local/cuda/version.json").write_text("{not json")
    (root / "var/lib/dpkg/status").write_bytes(b"\xff\xfe\x00garbage")
    (root / "var/lib/nvpmodel/status").write_text("???")
    (root / "etc/nv_tegra_release").write_text("something else entirely\n")
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("N/A\n")
    (root / "sys/class/thermal/thermal_zone1/temp").unlink()
    profile = probe(root)
    assert profile.platform == "jetson-orin-nano"                     # the device tree still says so
    assert (profile.cpu_cores, profile.cpu_model, profile.memory_bytes) == (0, "unknown", 0)
    assert (profile.cuda_version, profile.tensorrt_version, profile.l4t_version) == ("", "", "")
    assert profile.power_mode == "15W" and profile.power_mode_id == 0  # the conf's boot default
    temps = {z.zone: z.temp_c for z in profile.thermal_zones}
    assert temps["thermal_zone0"] is None and temps["thermal_zone1"] is None
    assert profile.max_temperature_c() == pytest.approx(48.406)       # tj-thermal


def test_hottest_ignores_placeholders_and_disabled_zones():
    zones = [ThermalZone("thermal_zone0", "PMIC-Die", 100.0), ThermalZone("thermal_zone1", "cv0-thermal", -256.0),
             ThermalZone("thermal_zone2", "CPU-therm", 51.5), ThermalZone("thermal_zone3", "GPU-therm", None)]
    assert hottest_c(zones) == 51.5
    assert hottest_c(zones[:2]) is None


def test_profile_is_json_and_fits_the_wire_message():
    profile = probe(DATA / "jetson-orin-nano", onnxruntime_providers=["CPUExecutionProvider"])
    text = json.dumps(profile.to_dict())
    assert json.loads(text)["thermal_zones"][0] == {"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 48.406}
    wire = json_format.ParseDict(profile.to_wire(), types_pb2.HardwareProfile())  # strict: no unknown field
    assert (wire.platform, wire.jetpack_version, wire.extra["l4t_version"], wire.extra["power_mode"]) == \
        ("jetson-orin-nano", "6.0", "36.3.0", "15W")
    lenient = json_format.ParseDict(profile.to_dict(), types_pb2.HardwareProfile(), ignore_unknown_fields=True)
    assert lenient.cpu_cores == 6


def test_fingerprint_follows_power_mode_not_temperature(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(DATA / "jetson-orin-nano", root)
    before = probe(root).fingerprint()
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("71000\n")
    assert probe(root).fingerprint() == before
    (root / "var/lib/nvpmodel/status").write_text("pmode:0001\n")
    after = probe(root)
    assert after.power_mode == "7W" and after.fingerprint() != before


def test_this_machine_probes_without_error():
    profile = probe()
    assert isinstance(profile, HardwareProfile)
    assert profile.platform != "" and profile.cpu_cores >= 1
    json.dumps(profile.to_dict())


@pytest.mark.parametrize("model, compatible, platform", [
    ("NVIDIA Jetson Nano Developer Kit", [], "jetson-nano"),
    ("NVIDIA Jetson Nano 2GB Developer Kit", [], "jetson-nano"),
    ("quill", ["nvidia,quill", "nvidia,tegra186"], "jetson-tx2"),
    ("NVIDIA Jetson TX2 NX Developer Kit", [], "jetson-tx2"),
    ("NVIDIA Jetson Xavier NX Developer Kit", [], "jetson-xavier-nx"),
    ("Jetson-AGX", ["nvidia,p2972-0000", "nvidia,galen", "nvidia,tegra194"], "jetson-agx-xavier"),
    ("NVIDIA Jetson AGX Xavier Developer Kit", [], "jetson-agx-xavier"),
    ("NVIDIA Jetson Orin Nano Developer Kit", [], "jetson-orin-nano"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", [], "jetson-orin-nx"),
    ("NVIDIA Jetson AGX Orin Developer Kit", [], "jetson-agx-orin"),
    ("Jetson AGX Orin", [], "jetson-agx-orin"),
    ("NVIDIA Jetson AGX Thor Developer Kit", [], "jetson-thor"),
    # a carrier board names itself; the module's part number says what it carries
    ("reComputer J4012", ["nvidia,p3768-0000+p3767-0000", "nvidia,p3767-0000", "nvidia,tegra234"], "jetson-orin-nx"),
    ("reComputer J3011", ["nvidia,p3768-0000+p3767-0004", "nvidia,p3767-0004", "nvidia,tegra234"],
     "jetson-orin-nano"),
])
def test_jetson_modules(model, compatible, platform):
    assert jetson_module(model, compatible).platform == platform


def test_an_unknown_jetson_carrier_is_still_a_jetson(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(DATA / "jetson-orin-nano", root)
    (root / "proc/device-tree/model").write_bytes(b"Custom Carrier\x00")
    (root / "proc/device-tree/compatible").write_bytes(b"acme,carrier\x00nvidia,tegra234\x00")
    profile = probe(root)
    assert (profile.platform, profile.platform_class, profile.soc, profile.gpu_compute_capability) == \
        ("jetson", "jetson", "tegra234", "8.7")


@pytest.mark.parametrize("l4t, jetpack", [
    ("32.7.1", "4.6.1"), ("32.7.4", "4.6.4"), ("32.7.9", "4.6.x"), ("35.4.1", "5.1.2"), ("35.9.9", "5.1.x"),
    ("36.3.0", "6.0"), ("36.4.3", "6.2"), ("36.9.0", "6.x"), ("28.2.1", ""), ("", ""), ("garbage", ""),
])
def test_l4t_to_jetpack(l4t, jetpack):
    assert jetpack_for_l4t(l4t) == jetpack


@pytest.mark.parametrize("model, generation", [
    ("Raspberry Pi 5 Model B Rev 1.0", "5"), ("Raspberry Pi 4 Model B Rev 1.4", "4"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "3"), ("Raspberry Pi Compute Module 4 Rev 1.0", "4"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "3"), ("NVIDIA Jetson Nano Developer Kit", ""),
])
def test_rpi_generation(model, generation):
    assert rpi_generation(model) == generation


@pytest.mark.parametrize("tree, flags", [
    ("x86-cpu", ["avx2"]),                                   # a desktop Core: no VNNI, INT8 gains little
    ("x86-cpu-amx", ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile"]),
    ("rpi5", ["asimd", "asimddp"]),                          # Cortex-A76: dot product
    ("rpi4", ["asimd"]),                                     # Cortex-A72: no dot product
])
def test_cpu_flags_from_cpuinfo(tree, flags):
    profile = probe(DATA / tree)
    assert profile.cpu_flags == flags
    assert profile.to_wire()["extra"]["cpu_flags"] == ",".join(flags)


def test_cpu_runtimes_reach_the_wire_profile():
    from edgefleet.adaptive.probe import CpuRuntimes

    found = CpuRuntimes(("openvino", "ncnn"), ("CPU", "GPU"), 1)
    profile = probe(DATA / "x86-cpu", runtimes=found)
    wire = json_format.ParseDict(profile.to_wire(), types_pb2.HardwareProfile())
    assert (wire.extra["runtimes"], wire.extra["openvino_devices"], wire.extra["ncnn_vulkan_gpus"]) == \
        ("openvino,ncnn", "CPU,GPU", "1")
    assert probe(DATA / "x86-cpu").runtimes == []           # a fixture tree reads no live runtime
    assert probe(DATA / "x86-cpu").fingerprint() != profile.fingerprint()


def test_this_machine_reports_the_runtimes_that_import():
    import importlib.util

    profile = probe()
    for name in ("openvino", "ncnn"):
        if importlib.util.find_spec(name) is None:
            assert name not in profile.runtimes
    if "openvino" in profile.runtimes:
        assert "CPU" in profile.openvino_devices


def test_what_native_code_prints_while_probing_goes_to_the_debug_log(caplog, capfd):
    with caplog.at_level(logging.DEBUG, logger="edgefleet.adaptive.probe"):
        with native_stderr_to_log("a runtime's probe"):
            os.write(2, b"dlopen failed libvulkan.so.1\nload vulkan driver failed\n")
    os.write(2, b"after\n")  # descriptor 2 is the terminal's again
    assert capfd.readouterr().err == "after\n"
    assert "a runtime's probe wrote: dlopen failed libvulkan.so.1 | load vulkan driver failed" in caplog.text
