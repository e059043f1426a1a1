"""adaptive.plan: calibration with a fake detector and a fake clock, the cache, the static table."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.adaptive.artifacts import Artifact, discover_artifacts, with_source_capacity
from edgefleet.adaptive.calibrate import CalibrationCache, measure
from edgefleet.adaptive.errors import PlanError
from edgefleet.adaptive.plan import PlanOptions, format_plan_report, make_controller, plan
from edgefleet.adaptive.probe import probe
from edgefleet.models.errors import BackendUnavailable
from edgefleet.models.manifest import ArtifactManifest, write_manifest

DATA = Path(__file__).resolve().parents[1] / "data" / "probe"
CPU = ["CPUExecutionProvider"]


def profile_of(tree: str, providers=CPU):
    return probe(DATA / tree, onnxruntime_providers=providers)


def manifest(name: str, *, fmt="onnx", precision="fp32", params_m=3.0, fixed=None, trt=None, cc=None,
             data: bytes | None = None, source: str | None = None, f1: float | None = None) -> ArtifactManifest:
    """A manifest whose file size says `params_m` million weights at `precision` (Artifact.capacity)."""
    per_weight = {"fp32": 4, "fp16": 2, "int8": 1}[precision]
    size = len(data) if data is not None else int(params_m * 1e6 * per_weight)
    sha = hashlib.sha256(data if data is not None else name.encode()).hexdigest()
    w, h = fixed or (640, 640)
    return ArtifactManifest(
        format=fmt, layout="ultralytics", precision=precision, input_width=w, input_height=h,
        class_names=("person", "car"), file_sha256=sha, file_size=size, created_at="2024-05-01T00:00:00+00:00",
        producer="test", batch_range=(1, None), resolution_range=None if fixed else ((32, 32), None),
        tensorrt_version=trt, gpu_compute_capability=cc,
        source_sha256=hashlib.sha256(source.encode()).hexdigest() if source else None,
        agreement={"f1": f1} if f1 is not None else {})


def artifact(name: str, **kw) -> Artifact:
    suffix = {"onnx": ".onnx", "tensorrt-engine": ".engine", "ultralytics-pt": ".pt", "openvino-ir": ".xml",
              "ncnn": ".param"}[kw.get("fmt", "onnx")]
    return Artifact(Path("/models") / f"{name}{suffix}", manifest(name, **kw))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeDetector:
    """detect_batch advances the fake clock by a set latency per (model, width): no real inference."""

    def __init__(self, clock, ms, jitter=()):
        self.clock, self.ms, self.jitter, self.calls, self.batches = clock, ms, list(jitter), 0, []

    def detect_batch(self, frames):
        self.batches.append(len(frames))
        extra = self.jitter[self.calls % len(self.jitter)] if self.jitter else 0.0
        self.calls += 1
        self.clock.now += (self.ms + extra) / 1000.0
        return [[] for _ in frames]


class FakeFactory:
    def __init__(self, latency_ms: dict, fail: dict | None = None):
        self.clock, self.latency_ms, self.fail, self.loads = FakeClock(), latency_ms, fail or {}, []

    def __call__(self, art, size, batch):
        self.loads.append((art.variant, size, batch))
        if art.variant in self.fail:
            raise self.fail[art.variant]
        return FakeDetector(self.clock, self.latency_ms[(art.variant, size[0])])


FRAMES = [np.zeros((48, 64, 3), np.uint8) for _ in range(3)]
# 15 fps: 66.7 ms per frame; with 80% headroom a call must take <= 53.3 ms (interval 1), 106.7 (2), 160 (3)
OPTIONS = PlanOptions(target_fps=15, input_sides=(320, 416, 512, 640))


def test_picks_the_largest_input_that_fits_and_skips_sizes_past_a_miss():
    factory = FakeFactory({("yolo-n", 320): 20, ("yolo-n", 416): 35, ("yolo-n", 512): 50, ("yolo-n", 640): 170})
    report = plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory,
                  timer=factory.clock)
    p = report.plan
    assert (p.model, p.input_width, p.detect_interval, p.source) == ("yolo-n", 512, 1, "calibration")
    assert p.latency_budget_ms == pytest.approx(66.667, abs=0.01)
    statuses = {c.input_width: (c.status, c.p95_ms, c.fits_interval) for c in report.candidates}
    assert statuses == {320: ("measured", 20.0, 1), 416: ("measured", 35.0, 1), 512: ("measured", 50.0, 1),
                        640: ("measured", 170.0, None)}
    factory2 = FakeFactory({("yolo-n", 320): 20, ("yolo-n", 416): 200})
    report2 = plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory2,
                   timer=factory2.clock)
    assert [c.status for c in report2.candidates] == ["measured", "measured", "skipped", "skipped"]
    assert [size for _, size, _ in factory2.loads] == [(320, 320), (416, 416)]   # 512 and 640 never loaded


def test_a_bigger_model_wins_when_it_fits_and_loses_when_it_only_fits_by_skipping_frames():
    arts = [artifact("yolo-n", params_m=3.2), artifact("yolo-s", params_m=11.2)]
    fast = {("yolo-n", s): ms for s, ms in [(320, 8), (416, 12), (512, 18), (640, 25)]}
    fits = plan(profile_of("x86-cpu"), arts, FRAMES, OPTIONS, detector_factory=(f := FakeFactory(
        {**fast, ("yolo-s", 320): 20, ("yolo-s", 416): 30, ("yolo-s", 512): 45, ("yolo-s", 640): 60})), timer=f.clock)
    assert (fits.plan.model, fits.plan.input_width, fits.plan.detect_interval) == ("yolo-s", 512, 1)
    slow = plan(profile_of("x86-cpu"), arts, FRAMES, OPTIONS, detector_factory=(g := FakeFactory(
        {**fast, ("yolo-s", 320): 60, ("yolo-s", 416): 90, ("yolo-s", 512): 130, ("yolo-s", 640): 200})),
        timer=g.clock)
    assert (slow.plan.model, slow.plan.input_width, slow.plan.detect_interval) == ("yolo-n", 640, 1)


def test_detect_interval_grows_only_when_nothing_fits_every_frame():
    factory = FakeFactory({("yolo-n", 320): 70, ("yolo-n", 416): 100, ("yolo-n", 512): 140, ("yolo-n", 640): 260})
    report = plan(profile_of("rpi4"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory,
                  timer=factory.clock)
    p = report.plan
    assert (p.input_width, p.detect_interval) == (416, 2)   # 416 fits 106.7 ms; 512 needs interval 3
    assert p.latency_budget_ms == pytest.approx(133.333, abs=0.01)
    assert "none fits when detecting every frame" in p.reason


def test_when_nothing_fits_the_fastest_runs_at_the_largest_interval():
    factory = FakeFactory({("yolo-n", 320): 400, ("yolo-n", 416): 600})
    report = plan(profile_of("rpi4"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory,
                  timer=factory.clock)
    assert (report.plan.input_width, report.plan.detect_interval) == (320, 3)
    assert "nothing fits" in report.plan.reason


def test_int8_at_a_larger_input_beats_fp16_at_a_smaller_one():
    arts = [artifact("yolo-n-fp16", fmt="tensorrt-engine", precision="fp16", params_m=3.2, trt="8.6.2", cc="8.7"),
            artifact("yolo-n-int8", fmt="tensorrt-engine", precision="int8", params_m=3.2, trt="8.6.2", cc="8.7")]
    lat = {("yolo-n-fp16", 320): 20, ("yolo-n-fp16", 416): 40, ("yolo-n-fp16", 512): 60, ("yolo-n-fp16", 640): 90,
           ("yolo-n-int8", 320): 10, ("yolo-n-int8", 416): 20, ("yolo-n-int8", 512): 30, ("yolo-n-int8", 640): 45}
    factory = FakeFactory(lat)
    report = plan(profile_of("jetson-orin-nano"), arts, FRAMES, OPTIONS, detector_factory=factory, timer=factory.clock)
    assert (report.plan.model, report.plan.input_width) == ("yolo-n-int8", 640)
    factory = FakeFactory({k: (v if k[0] == "yolo-n-int8" else v / 2) for k, v in lat.items()})
    report = plan(profile_of("jetson-orin-nano"), arts, FRAMES, OPTIONS, detector_factory=factory, timer=factory.clock)
    assert (report.plan.model, report.plan.input_width) == ("yolo-n-fp16", 640)  # same size: higher precision


def test_measure_times_detect_batch_with_the_injected_timer_and_batches_streams():
    clock = FakeClock()
    det = FakeDetector(clock, 10.0, jitter=[0.0, 0.0, 5.0, 0.0, 30.0])  # call 0 is the warm-up

    m = measure(artifact("yolo-n"), (320, 320), 2, FRAMES + FRAMES[:1], lambda *a: det, clock, warmup_calls=1)
    assert m.calls == 4 and det.batches == [2] * 5
    assert (m.p50_ms, m.mean_ms) == (pytest.approx(12.5), pytest.approx(18.75))
    assert m.p95_ms == pytest.approx(float(np.percentile([10, 15, 10, 40], 95)))


def test_the_cache_is_keyed_by_artifact_and_profile(tmp_path):
    cache = tmp_path / "calibration.json"
    lat = {("yolo-n", s): ms for s, ms in [(320, 10), (416, 20), (512, 30), (640, 45)]}
    first = FakeFactory(lat)
    report = plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=first,
                  timer=first.clock, cache_path=cache)
    assert len(first.loads) == 4 and len(json.loads(cache.read_text())["entries"]) == 4
    again = FakeFactory(lat)
    cached = plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=again,
                  timer=again.clock, cache_path=cache)
    assert again.loads == [] and {c.status for c in cached.candidates} == {"cached"}
    assert cached.plan.to_dict() == report.plan.to_dict()
    other_device = FakeFactory(lat)
    plan(profile_of("x86-nvidia"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=other_device,
         timer=other_device.clock, cache_path=cache)
    assert len(other_device.loads) == 4
    new_file = FakeFactory({("yolo-n", s): ms for (_, s), ms in lat.items()})
    changed = Artifact(Path("/models/yolo-n.onnx"), manifest("yolo-n", data=b"retrained weights"))
    plan(profile_of("x86-cpu"), [changed], FRAMES, OPTIONS, detector_factory=new_file, timer=new_file.clock,
         cache_path=cache)
    assert len(new_file.loads) == 4


def test_a_corrupt_cache_is_measured_again(tmp_path):
    cache = tmp_path / "calibration.json"
    cache.write_text("{broken")
    assert CalibrationCache.load(cache).entries == {}
    factory = FakeFactory({("yolo-n", s): 10 for s in (320, 416, 512, 640)})
    plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory,
         timer=factory.clock, cache_path=cache)
    assert len(factory.loads) == 4 and json.loads(cache.read_text())["version"] == 1


def test_a_candidate_that_cannot_load_is_recorded_and_the_rest_decide():
    arts = [artifact("yolo-s", params_m=11.2), artifact("yolo-n", params_m=3.2)]
    factory = FakeFactory({("yolo-n", s): 10 for s in (320, 416, 512, 640)},
                          fail={"yolo-s": BackendUnavailable("no TensorRT here")})
    report = plan(profile_of("x86-cpu"), arts, FRAMES, OPTIONS, detector_factory=factory, timer=factory.clock)
    failed = [c for c in report.candidates if c.model == "yolo-s"]
    assert {c.status for c in failed} == {"failed"} and "no TensorRT here" in failed[0].note
    assert report.plan.model == "yolo-n"


def test_when_every_candidate_fails_the_static_table_decides():
    factory = FakeFactory({}, fail={"yolo-n": BackendUnavailable("broken")})
    report = plan(profile_of("x86-cpu"), [artifact("yolo-n")], FRAMES, OPTIONS, detector_factory=factory,
                  timer=factory.clock)
    assert report.plan.source == "static" and "calibration measured no candidate" in report.plan.reason
    assert (report.plan.input_width, report.plan.detect_interval) == (416, 1)


STATIC_ARTIFACTS = [
    {"name": "yolo-n-int8", "fmt": "tensorrt-engine", "precision": "int8", "params_m": 3.2},
    {"name": "yolo-n-fp16", "fmt": "tensorrt-engine", "precision": "fp16", "params_m": 3.2},
    {"name": "yolo-s-fp16", "fmt": "tensorrt-engine", "precision": "fp16", "params_m": 11.2},
    {"name": "yolo-n", "fmt": "onnx", "precision": "fp32", "params_m": 3.2},
    {"name": "yolo-s", "fmt": "onnx", "precision": "fp32", "params_m": 11.2},
]


@pytest.mark.parametrize("tree, measured_fps, expected", [
    ("jetson-nano", None, ("yolo-n-fp16", 416, 1)),      # Maxwell: FP16 engine, not INT8
    ("jetson-nano", 18.0, ("yolo-n-fp16", 416, 3)),      # below 20 fps: every 3rd frame
    ("jetson-nano", 12.0, ("yolo-n-fp16", 320, 3)),      # below 15 fps: and 320
    ("jetson-xavier-nx", None, ("yolo-n-int8", 512, 1)),
    ("jetson-orin-nano", None, ("yolo-n-int8", 640, 1)),
    ("rpi4", None, ("yolo-n", 320, 3)),
    ("rpi5", None, ("yolo-n", 320, 2)),
    ("x86-cpu", None, ("yolo-n", 416, 1)),
    ("x86-cpu", 12.0, ("yolo-n", 320, 1)),
    ("x86-nvidia", None, ("yolo-s-fp16", 640, 1)),
])
def test_static_table(tree, measured_fps, expected):
    arts = [artifact(a.pop("name"), trt="8.6.2", cc="8.7", **a) if a["fmt"] != "onnx" else artifact(a.pop("name"), **a)
            for a in (dict(x) for x in STATIC_ARTIFACTS)]
    options = PlanOptions(calibrate=False, measured_fps=measured_fps)
    report = plan(profile_of(tree), arts, FRAMES, options)
    p = report.plan
    assert (p.model, p.input_width, p.detect_interval) == expected
    assert p.source == "static" and "calibration disabled" in p.reason
    assert {c.status for c in report.candidates} == {"static"}


def test_no_frames_means_static():
    report = plan(profile_of("rpi4"), [artifact("yolo-n")], [], PlanOptions())
    assert report.plan.source == "static" and "no frames" in report.plan.reason


def test_a_fixed_size_artifact_runs_at_its_size():
    art = artifact("fixed", fixed=(640, 384))
    factory = FakeFactory({("fixed", 640): 20})
    report = plan(profile_of("x86-cpu"), [art], FRAMES, OPTIONS, detector_factory=factory, timer=factory.clock)
    assert (report.plan.input_width, report.plan.input_height) == (640, 384)
    static = plan(profile_of("x86-cpu"), [art], FRAMES, PlanOptions(calibrate=False))
    assert (static.plan.input_width, static.plan.input_height) == (640, 384)


def test_ladder_goes_interval_then_size_then_smaller_model():
    arts = [artifact("yolo-n", params_m=3.2), artifact("yolo-s", params_m=11.2)]
    lat = {("yolo-n", 320): 5, ("yolo-n", 416): 8, ("yolo-n", 512): 12, ("yolo-n", 640): 18,
           ("yolo-s", 320): 12, ("yolo-s", 416): 20, ("yolo-s", 512): 30, ("yolo-s", 640): 45}
    factory = FakeFactory(lat)
    report = plan(profile_of("x86-cpu"), arts, FRAMES, OPTIONS, detector_factory=factory, timer=factory.clock)
    steps = [(r.model, r.input_width, r.detect_interval, r.expected_ms) for r in report.ladder]
    assert steps == [("yolo-s", 640, 1, 45.0), ("yolo-s", 640, 2, 45.0), ("yolo-s", 640, 3, 45.0),
                     ("yolo-s", 512, 3, 30.0), ("yolo-s", 416, 3, 20.0), ("yolo-s", 320, 3, 12.0),
                     ("yolo-s", 256, 3, None), ("yolo-n", 256, 3, None)]
    controller = make_controller(report)
    assert controller.rung == report.ladder[0]
    assert controller.config.frame_budget_ms == pytest.approx(1000 / 15)
    assert controller.config.thermal_warn_c == 85.0


def test_report_is_json_and_reads_for_people():
    arts = [artifact("yolo-n", params_m=3.2), artifact("yolo-s", params_m=11.2)]
    factory = FakeFactory({("yolo-n", s): s / 20 for s in (320, 416, 512, 640)}
                          | {("yolo-s", s): s / 15 for s in (320, 416, 512, 640)})
    report = plan(profile_of("jetson-orin-nano"), arts, FRAMES, OPTIONS, detector_factory=factory,
                  timer=factory.clock)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["plan"]["model"] == "yolo-s" and data["platform"] == "jetson-orin-nano"
    assert len(data["candidates"]) == 8 and data["ladder"][0]["model"] == "yolo-s"
    text = format_plan_report(report)
    assert "jetson-orin-nano" in text and report.plan.reason in text
    chosen = [line for line in text.splitlines() if line.startswith("* ")]
    assert len(chosen) == 1 and "yolo-s" in chosen[0] and " 640x640" in chosen[0]


def test_no_artifact_is_a_plan_error():
    with pytest.raises(PlanError, match="no model artifact"):
        plan(profile_of("x86-cpu"), [], FRAMES)


@pytest.mark.parametrize("field, value", [("target_fps", 0), ("streams", 0), ("max_detect_interval", 0),
                                          ("headroom", 1.5), ("input_sides", (300,))])
def test_options_are_checked(field, value):
    with pytest.raises(PlanError, match=field):
        PlanOptions(**{field: value})


def _write_artifact(folder: Path, name: str, data: bytes, **kw) -> Path:
    path = folder / name
    path.write_bytes(data)
    write_manifest(manifest(name, data=data, **kw), path)
    return path


def test_discover_verifies_files_and_checks_the_device(tmp_path):
    good = _write_artifact(tmp_path, "yolo-n.onnx", b"onnx bytes")
    truncated = _write_artifact(tmp_path, "yolo-s.onnx", b"full onnx bytes")
    truncated.write_bytes(b"full")
    engine = _write_artifact(tmp_path, "yolo-n-int8.engine", b"engine bytes", fmt="tensorrt-engine",
                             precision="int8", trt="10.3.0", cc="8.7")
    (tmp_path / "notes.txt").write_text("not a model")   # no manifest: not an artifact
    found, rejected = discover_artifacts([tmp_path], profile_of("jetson-orin-nano"))
    assert [a.path for a in found] == [good]
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert set(reasons) == {"yolo-s.onnx", "yolo-n-int8.engine"}
    assert "truncated" in reasons["yolo-s.onnx"] and "TensorRT" in reasons["yolo-n-int8.engine"]
    found, rejected = discover_artifacts([tmp_path, good], profile_of("x86-cpu", providers=[]))
    assert found == [] and any("onnxruntime" in r.reason for r in rejected)
    assert engine.exists()


def cpu_formats(ir_512_ms: float) -> tuple[list[Artifact], FakeFactory]:
    """An FP32 ONNX source and what `model quantize` makes of it: an INT8 ONNX that agrees 0.91 (too
    little), an FP32 OpenVINO IR (0.999) and an INT8 NCNN model (0.97). The copies' files weigh
    nothing like the source's; with_source_capacity makes them one network."""
    arts = with_source_capacity([
        artifact("yolo-fp32", params_m=3.0),
        artifact("yolo-int8", precision="int8", params_m=0.2, source="yolo-fp32", f1=0.91),
        artifact("yolo-ov", fmt="openvino-ir", params_m=0.01, source="yolo-fp32", f1=0.999),
        artifact("yolo-ncnn-int8", fmt="ncnn", precision="int8", params_m=0.01, source="yolo-fp32", f1=0.97)])
    latency = {("yolo-fp32", 320): 30, ("yolo-fp32", 416): 60, ("yolo-fp32", 512): 90,
               ("yolo-ov", 320): 15, ("yolo-ov", 416): 35, ("yolo-ov", 512): ir_512_ms,
               ("yolo-ncnn-int8", 320): 10, ("yolo-ncnn-int8", 416): 25, ("yolo-ncnn-int8", 512): 45,
               ("yolo-int8", 320): 8, ("yolo-int8", 416): 18, ("yolo-int8", 512): 30}
    return arts, FakeFactory(latency)


def test_cpu_formats_largest_input_then_the_fastest_that_agrees_and_int8_below_agreement_is_refused():
    arts, factory = cpu_formats(ir_512_ms=50)
    assert {a.capacity for a in arts} == {arts[0].capacity}
    options = PlanOptions(target_fps=15, input_sides=(320, 416, 512))
    report = plan(profile_of("x86-cpu"), arts, FRAMES, options, detector_factory=factory, timer=factory.clock)
    p = report.plan
    # 512 fits in both the IR (fp32, 50 ms) and NCNN (int8 agreeing 0.97 >= 0.95, 45 ms): as accurate, NCNN is faster
    assert (p.model, p.backend, p.precision, p.input_width, p.detect_interval) == ("yolo-ncnn-int8", "ncnn", "int8",
                                                                                   512, 1)
    assert "the fastest of 2 as accurate" in p.reason
    assert "yolo-int8" not in {variant for variant, _, _ in factory.loads}     # refused unmeasured
    by = {(c.model, c.input_width): c for c in report.candidates}
    assert {(c.status, c.note) for m, c in by.items() if m[0] == "yolo-int8"} == \
        {("rejected", "agreement 0.910 below 0.95")}
    assert by[("yolo-ov", 512)].note == "fits, as accurate as the plan but slower"
    assert by[("yolo-fp32", 416)].note == "fits only detecting every 2 frames"
    assert by[("yolo-ov", 320)].note == "fits, less accurate than the plan"
    text = format_plan_report(report)
    assert "agreement 0.910 below 0.95" in text and "0.999" in text
    assert all(r.model_path != arts[1].path.as_posix() for r in report.ladder)   # never stepped down to


def test_a_stricter_agreement_threshold_keeps_the_int8_model_out():
    arts, factory = cpu_formats(ir_512_ms=50)
    strict = PlanOptions(target_fps=15, input_sides=(320, 416, 512), min_agreement=0.98)
    report = plan(profile_of("x86-cpu"), arts, FRAMES, strict, detector_factory=factory, timer=factory.clock)
    assert (report.plan.model, report.plan.precision, report.plan.input_width) == ("yolo-ov", "fp32", 512)
    assert {c.status for c in report.candidates if c.model == "yolo-ncnn-int8"} == {"rejected"}


def test_an_unchecked_int8_engine_ranks_below_fp32_at_the_same_size():
    """A TensorRT INT8 engine carries no agreement: it is not taken to be as accurate as FP32."""
    arts = [artifact("yolo-fp32", params_m=3.0),
            artifact("yolo-int8-engine", fmt="tensorrt-engine", precision="int8", params_m=3.0, trt="10.3.0", cc="8.7",
                     source="yolo-fp32")]
    arts = with_source_capacity(arts)
    factory = FakeFactory({("yolo-fp32", 320): 20, ("yolo-int8-engine", 320): 5})
    options = PlanOptions(target_fps=15, input_sides=(320,))
    report = plan(profile_of("x86-cpu"), arts, FRAMES, options, detector_factory=factory, timer=factory.clock)
    assert report.plan.model == "yolo-fp32"


def test_cpu_formats_int8_wins_when_only_it_fits_the_larger_input():
    arts, factory = cpu_formats(ir_512_ms=70)
    options = PlanOptions(target_fps=15, input_sides=(320, 416, 512))
    p = plan(profile_of("x86-cpu"), arts, FRAMES, options, detector_factory=factory, timer=factory.clock).plan
    assert (p.model, p.precision, p.input_width, p.detect_interval) == ("yolo-ncnn-int8", "int8", 512, 1)
    looser = PlanOptions(target_fps=15, input_sides=(320, 416, 512), min_agreement=0.9)
    factory.loads.clear()
    report = plan(profile_of("x86-cpu"), arts, FRAMES, looser, detector_factory=factory, timer=factory.clock)
    assert any(variant == "yolo-int8" for variant, _, _ in factory.loads)
    assert report.plan.model == "yolo-int8"     # agreeing 0.91 >= 0.9 now counts as FP32: the fastest at 512


def test_only_disagreeing_artifacts_is_a_plan_error():
    with pytest.raises(PlanError, match="less than 0.95"):
        plan(profile_of("x86-cpu"), [artifact("yolo-int8", precision="int8", f1=0.8)], FRAMES, OPTIONS)


def test_discover_takes_a_file_once_and_an_openvino_ir_only_where_openvino_runs(tmp_path):
    from edgefleet.adaptive.probe import CpuRuntimes

    (tmp_path / "a").mkdir()
    first = _write_artifact(tmp_path / "a", "m.onnx", b"same")
    copy = _write_artifact(tmp_path, "bundled.onnx", b"same")
    assert copy.exists()
    ir = _write_artifact(tmp_path, "m-int8.xml", b"<net/>", fmt="openvino-ir", precision="int8")
    with_ov = probe(DATA / "x86-cpu", onnxruntime_providers=CPU, runtimes=CpuRuntimes(("openvino",), ("CPU",)))
    found, rejected = discover_artifacts([first, tmp_path], with_ov)
    assert sorted(a.path.name for a in found) == ["m-int8.xml", "m.onnx"]
    assert [(Path(r.path).name, r.reason) for r in rejected] == [("bundled.onnx", f"the same file as {first}")]
    assert next(a for a in found if a.path == ir).backend == "openvino"
    found, rejected = discover_artifacts([ir], profile_of("x86-cpu"))
    assert found == [] and "openvino" in rejected[0].reason
