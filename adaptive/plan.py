"""Choosing what to run: model, precision, backend, input size, batch and detect interval.

    artifacts, rejected = discover_artifacts([models_dir, bundled_model], profile)
    report = plan(profile, artifacts, frames, PlanOptions(target_fps=15, streams=2),
                  rejected=rejected, cache_path=state_dir / "calibration.json")
    print(format_plan_report(report))          # or json.dumps(report.to_dict())
    report.plan                                # the RuntimePlan to start with
    controller = make_controller(report, profile)   # the runtime controller over report.ladder

With frames, a short calibration times every artifact at a few input sizes (smallest first;
an artifact's larger sizes are skipped once one misses even the loosest budget) and picks the
most accurate candidate whose p95 fits the budget: `headroom` of the time `detect_interval`
frames take at the target fps, trying detect interval 1 first. "Most accurate" is the bigger
network first (Artifact.capacity), then the larger input, then the higher precision, where a
quantized or converted artifact whose agreement with its FP32 source is at least
`min_agreement` counts as that source's precision; among equals, the fastest.
Measurements are cached by artifact sha256 + profile fingerprint. Without frames, or with
calibration off, the static table in adaptive.rules decides.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import PRECISION_RANK, Artifact, Rejected
from .calibrate import (
    CalibrationCache,
    DetectorFactory,
    Measurement,
    Timer,
    cache_key,
    load_real_detector,
    measure,
)
from .controller import ControllerConfig, Rung, RuntimeController, thermal_limits
from .errors import PlanError
from .probe import HardwareProfile
from .rules import LADDER_SIDES, calibration_sides, fast_int8, rule_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    target_fps: float = 15.0
    """Frames per second per stream the loop must sustain."""
    streams: int = 1
    """Frames per detector call (one per stream): the batch calibrated and planned."""
    input_sides: tuple[int, ...] | None = None
    """Square input sizes to calibrate; None: per platform class (adaptive.rules.CALIBRATION_SIDES)."""
    max_detect_interval: int = 3
    """Detect at least every this many frames. Higher lets a slower model through; boxes of fast
    movers lag further between detections."""
    headroom: float = 0.8
    """A candidate must fit in this fraction of its time budget: room for decoding, tracking and
    the outbox, and for the device warming up."""
    calibrate: bool = True
    warmup_calls: int = 1
    measured_fps: float | None = None
    """For the static table: the fps the loop reached last time, to apply its slow-steps."""
    min_ladder_side: int = 256
    min_agreement: float = 0.95
    """A candidate whose detections agree less than this (F1 against its FP32 source, from its
    manifest) with the source's is not run: faster, but it finds other things."""

    def __post_init__(self) -> None:
        if not self.target_fps > 0:
            raise PlanError(f"target_fps must be > 0, got {self.target_fps}")
        if self.streams < 1:
            raise PlanError(f"streams must be >= 1, got {self.streams}")
        if self.max_detect_interval < 1:
            raise PlanError(f"max_detect_interval must be >= 1, got {self.max_detect_interval}")
        if not 0 < self.headroom <= 1:
            raise PlanError(f"headroom must be in (0, 1], got {self.headroom}")
        if not 0 <= self.min_agreement <= 1:
            raise PlanError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        sides = self.input_sides
        if sides is not None and (not sides or any(s <= 0 or s % 32 for s in sides)):
            raise PlanError(f"input_sides must be positive multiples of 32, got {self.input_sides}")

    @property
    def frame_ms(self) -> float:
        return 1000.0 / self.target_fps


@dataclass(frozen=True)
class DevicePlan:
    """What a device runs now and why (edgefleet.v1.RuntimePlan; agent.convert sends it): the plan's
    choice, then whatever the runtime controller, an operator's override or a deployment changed."""
    model: str = ""
    artifact_sha256: str = ""
    backend: str = ""
    """"onnxruntime", "tensorrt", "ultralytics"."""
    precision: str = ""
    input_width: int = 0
    input_height: int = 0
    batch: int = 0
    """Frames per detector call at most (one per stream; a served batch's maximum)."""
    detect_interval: int = 0
    latency_budget_ms: float = 0.0
    """Budget of one detector call (0: none)."""
    reason: str = ""


@dataclass(frozen=True)
class RuntimePlan:
    model: str
    model_path: str
    artifact_sha256: str
    backend: str
    precision: str
    input_width: int
    input_height: int
    batch: int
    detect_interval: int
    latency_budget_ms: float
    """Budget of one detector call: the time `detect_interval` frames take at `target_fps`."""
    target_fps: float
    source: str
    """"calibration" (measured now or cached) or "static" (adaptive.rules)."""
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def device_plan(self) -> DevicePlan:
        """What the device runs, of this plan (less where the model file is and how it was chosen)."""
        return DevicePlan(self.model, self.artifact_sha256, self.backend, self.precision, self.input_width,
                          self.input_height, self.batch, self.detect_interval, self.latency_budget_ms, self.reason)


def detector_fields(detector, model_path: str | Path = "") -> dict:
    """What a DevicePlan says of the detector a loop runs: its backend (the backend module's name),
    precision and sha256 (from the model's manifest, where one sits beside the file; "" otherwise)
    and input size. A deployed artifact's sha256 is the rollout's (for a bundle, its tar's): the
    caller puts that in instead."""
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import read_manifest

    path = model_path or getattr(detector, "model_path", "") or ""
    try:
        manifest = read_manifest(Path(path)) if path else None
    except (ModelError, OSError):
        manifest = None
    width, height = detector.input_size
    return {"backend": type(detector).__module__.rsplit(".", 1)[-1], "input_width": width, "input_height": height,
            "precision": manifest.precision if manifest else "",
            "artifact_sha256": manifest.file_sha256 if manifest else ""}


@dataclass
class Candidate:
    model: str
    model_path: str
    artifact_sha256: str
    backend: str
    precision: str
    input_width: int
    input_height: int
    batch: int
    capacity: int
    agreement: float | None = 1.0
    """F1 against the FP32 source (adaptive.artifacts.Artifact.agreement); None: unchecked."""
    status: str = "pending"
    """"measured", "cached", "skipped", "failed", "rejected" (agreement too low: not measured), or
    "static" (not measured)."""
    p50_ms: float | None = None
    p95_ms: float | None = None
    fits_interval: int | None = None
    """The smallest detect interval whose budget its p95 fits; None: none up to the maximum."""
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlanReport:
    platform: str
    profile_summary: str
    fingerprint: str
    options: PlanOptions
    plan: RuntimePlan
    candidates: list[Candidate]
    ladder: list[Rung]
    rejected: list[Rejected] = field(default_factory=list)
    cache_path: str | None = None
    thermal: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: what `edge-agent plan --json` prints."""
        return {
            "platform": self.platform, "profile": self.profile_summary, "fingerprint": self.fingerprint,
            "options": asdict(self.options), "plan": self.plan.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "ladder": [r.to_dict() for r in self.ladder],
            "rejected": [r.to_dict() for r in self.rejected], "cache_path": self.cache_path,
            "thermal": dict(self.thermal),
        }


def _accuracy_key(c: Candidate) -> tuple:
    """Bigger network, then larger input, then precision, then speed. A candidate whose agreement
    with its FP32 source was checked (and passed min_agreement, or it would not have been timed)
    ranks as that source: the threshold is what "as accurate" means, so the faster of the two wins.
    An unchecked INT8 artifact (a TensorRT INT8 engine) ranks below FP32 and FP16."""
    rank = PRECISION_RANK["fp32"] if c.agreement is not None else PRECISION_RANK.get(c.precision, 0)
    return (c.capacity, c.input_width * c.input_height, rank, -(c.p95_ms or 0.0))


def disagrees(art: Artifact, options: PlanOptions) -> bool:
    """Whether the artifact's checked agreement with its FP32 source is under the threshold."""
    return art.agreement is not None and art.agreement < options.min_agreement


def _candidate(art: Artifact, size: tuple[int, int], batch: int) -> Candidate:
    return Candidate(art.variant, str(art.path), art.sha256, art.backend, art.manifest.precision, size[0],
                     size[1], batch, art.capacity, art.agreement)


def plan(profile: HardwareProfile, artifacts: Sequence[Artifact], frames: Sequence[np.ndarray] = (),
         options: PlanOptions | None = None, *, rejected: Sequence[Rejected] = (),
         detector_factory: DetectorFactory = load_real_detector, timer: Timer = time.perf_counter,
         cache_path: Path | str | None = None) -> PlanReport:
    """The plan for this device, with every candidate considered and why the choice won.

    Raises PlanError when there is no artifact to run.
    """
    options = options or PlanOptions()
    if not artifacts:
        why = "; ".join(f"{r.path}: {r.reason}" for r in rejected) or "none found"
        raise PlanError(f"no model artifact this device can run ({why})")
    artifacts = sorted(artifacts, key=lambda a: (-a.capacity, a.variant))
    usable = [a for a in artifacts if not disagrees(a, options)]
    if not usable:
        why = "; ".join(f"{a.path}: agreement {a.agreement:.3f}" for a in artifacts)
        raise PlanError(f"every model artifact agrees with its FP32 source less than {options.min_agreement:g} ({why})")
    chosen = None
    candidates: list[Candidate] = []
    if options.calibrate and len(frames):
        candidates = _calibrate(profile, artifacts, frames, options, detector_factory, timer, cache_path)
        chosen = _choose_measured(candidates, options)
        if chosen is None:
            failures = "; ".join(f"{c.model} {c.input_width}: {c.note}"
                                 for c in candidates if c.status == "failed")
            why = f"calibration measured no candidate ({failures or 'nothing to measure'})"
        else:
            why = ""
    else:
        why = "calibration disabled" if not options.calibrate else "no frames to calibrate on"
    if chosen is None:
        chosen, static_candidates = _static_plan(profile, usable, options, why)
        candidates = candidates or static_candidates
    _explain_losers(candidates, chosen)
    ladder = controller_ladder(chosen, usable, candidates, options)
    return PlanReport(profile.platform, profile.summary(), profile.fingerprint(), options, chosen, candidates,
                      ladder, list(rejected), str(cache_path) if cache_path else None,
                      thermal_limits(profile.platform_class))


def _calibrate(profile: HardwareProfile, artifacts: Sequence[Artifact], frames: Sequence[np.ndarray],
               options: PlanOptions, factory: DetectorFactory, timer: Timer,
               cache_path: Path | str | None) -> list[Candidate]:
    sides = options.input_sides or calibration_sides(profile)
    loosest = options.frame_ms * options.max_detect_interval * options.headroom
    cache = CalibrationCache.load(cache_path)
    fingerprint = profile.fingerprint()
    candidates = []
    for art in artifacts:
        missed_at = None
        sizes = art.input_sizes(sides)
        if not sizes:
            c = _candidate(art, art.manifest.input_size, options.streams)
            c.status, c.note = "skipped", f"accepts none of the sizes {list(sides)}"
            candidates.append(c)
            continue
        for size in sizes:
            c = _candidate(art, size, options.streams)
            candidates.append(c)
            if disagrees(art, options):
                c.status, c.note = "rejected", f"agreement {art.agreement:.3f} below {options.min_agreement:g}"
                continue
            if missed_at is not None:
                c.status, c.note = "skipped", f"{missed_at}x{missed_at} already missed the loosest budget"
                continue
            key = cache_key(art.sha256, fingerprint, size, options.streams)
            found: Measurement | None = cache.get(key)
            if found is not None:
                c.status = "cached"
            else:
                try:
                    found = measure(art, size, options.streams, frames, factory, timer, options.warmup_calls)
                except Exception as err:  # noqa: BLE001 - a candidate that cannot run is recorded, not fatal
                    logger.warning("calibrating %s at %sx%s failed: %s", art.variant, size[0], size[1], err)
                    c.status, c.note = "failed", f"{type(err).__name__}: {err}"
                    continue
                cache.put(key, found)
                c.status = "measured"
                logger.info("calibrated %s at %sx%s batch %d: p50 %.1f ms, p95 %.1f ms", art.variant, size[0],
                            size[1], options.streams, found.p50_ms, found.p95_ms)
            c.p50_ms, c.p95_ms = found.p50_ms, found.p95_ms
            c.fits_interval = next((k for k in range(1, options.max_detect_interval + 1)
                                    if found.p95_ms <= options.frame_ms * k * options.headroom), None)
            if c.fits_interval is None:
                missed_at = size[0]
                c.note = f"p95 over {loosest:.1f} ms even at detect interval {options.max_detect_interval}"
    try:
        cache.save()
    except OSError as err:
        logger.warning("calibration cache %s not written: %s", cache_path, err)
    return candidates


def _choose_measured(candidates: Sequence[Candidate], options: PlanOptions) -> RuntimePlan | None:
    timed = [c for c in candidates if c.p95_ms is not None]
    if not timed:
        return None
    for k in range(1, options.max_detect_interval + 1):
        fits = [c for c in timed if c.fits_interval is not None and c.fits_interval <= k]
        if fits:
            best = max(fits, key=_accuracy_key)
            budget = options.frame_ms * k * options.headroom
            reason = (f"most accurate of {len(fits)} candidate(s) that fit: p95 {best.p95_ms:.1f} ms within "
                      f"{budget:.1f} ms ({options.headroom:.0%} of {k} frame(s) at "
                      f"{options.target_fps:g} fps)")
            peers = sum(_accuracy_key(c)[:-1] == _accuracy_key(best)[:-1] for c in fits)
            if peers > 1:
                reason += (f"; the fastest of {peers} as accurate (agreement >= {options.min_agreement:g} "
                           "counts as FP32)")
            if k > 1:
                reason += f"; none fits when detecting every {'frame' if k == 2 else f'{k - 1} frames'}"
            break
    else:
        k = options.max_detect_interval
        best = min(timed, key=lambda c: c.p95_ms if c.p95_ms is not None else float("inf"))  # all timed
        reason = (f"nothing fits even detecting every {k} frames; the fastest candidate "
                  f"(p95 {best.p95_ms:.1f} ms); expect dropped frames")
    return RuntimePlan(best.model, best.model_path, best.artifact_sha256, best.backend, best.precision,
                       best.input_width, best.input_height, best.batch, k, round(options.frame_ms * k, 3),
                       options.target_fps, "calibration", reason)


def _explain_losers(candidates: Sequence[Candidate], chosen: RuntimePlan) -> None:
    """Say why each timed candidate that was not chosen lost, where nothing says it yet."""
    key = (chosen.model_path, chosen.input_width, chosen.input_height)
    winner = next((c for c in candidates if (c.model_path, c.input_width, c.input_height) == key), None)
    if winner is None or chosen.source != "calibration":
        return
    for c in candidates:
        if c.note or c.p95_ms is None or c is winner:
            continue
        if c.fits_interval is not None and c.fits_interval > chosen.detect_interval:
            c.note = f"fits only detecting every {c.fits_interval} frames"
        elif _accuracy_key(c)[:-1] < _accuracy_key(winner)[:-1]:
            c.note = "fits, less accurate than the plan"
        else:
            c.note = "fits, as accurate as the plan but slower"


def _static_plan(profile: HardwareProfile, artifacts: Sequence[Artifact], options: PlanOptions,
                 why: str) -> tuple[RuntimePlan, list[Candidate]]:
    rule = rule_for(profile)
    precisions = list(rule.precisions)
    if not fast_int8(profile) and "int8" in precisions:
        precisions.remove("int8")
        precisions.append("int8")

    def rank(a: Artifact) -> tuple:
        formats = rule.formats
        fmt = formats.index(a.manifest.format) if a.manifest.format in formats else len(formats)
        precision = a.manifest.precision
        prec = precisions.index(precision) if precision in precisions else len(precisions)
        size = a.capacity if rule.model == "smallest" else -a.capacity
        return fmt, prec, size, a.variant

    side, interval, applied = rule.input_side, rule.detect_interval, []
    if options.measured_fps is not None:
        for step in rule.slow:
            if options.measured_fps < step.below_fps:
                side = step.input_side or side
                interval = step.detect_interval or interval
                change = f"input {step.input_side}" if step.input_side else f"every {step.detect_interval}"
                applied.append(f"below {step.below_fps:g} fps: {change}")
    interval = min(max(interval, 1), max(options.max_detect_interval, interval))
    art = min(artifacts, key=rank)
    size = _nearest_size(art, side)
    reason = f"static rule {rule.platform!r}: {rule.note}" + (f" ({why})" if why else "")
    if applied:
        reason += f"; last run at {options.measured_fps:g} fps: " + ", ".join(applied)
    if size != (side, side):
        reason += f"; {art.variant} takes {size[0]}x{size[1]}"
    chosen = RuntimePlan(art.variant, str(art.path), art.sha256, art.backend, art.manifest.precision, size[0],
                         size[1], options.streams, interval, round(options.frame_ms * interval, 3),
                         options.target_fps, "static", reason)
    candidates = []
    for a in sorted(artifacts, key=rank):
        c = _candidate(a, _nearest_size(a, side), options.streams)
        c.status, c.note = "static", "not measured"
        candidates.append(c)
    return chosen, candidates


def _nearest_size(art: Artifact, side: int) -> tuple[int, int]:
    """(side, side) when the artifact takes it; else its largest accepted square not above it;
    else its smallest; a fixed-size artifact: its size."""
    if art.accepts((side, side)):
        return side, side
    options = art.input_sizes(sorted(set(LADDER_SIDES) | {side}))
    if not options:
        return art.manifest.input_size
    below = [s for s in options if s[0] <= side]
    return below[-1] if below else options[0]


def controller_ladder(chosen: RuntimePlan, artifacts: Sequence[Artifact], candidates: Sequence[Candidate],
                      options: PlanOptions) -> list[Rung]:
    """Rung 0 is the plan; then the detect interval up to the maximum, then smaller inputs of the
    same model, then smaller models (by capacity) at inputs no larger than the last rung's."""
    by_path = {str(a.path): a for a in artifacts}
    top = by_path[chosen.model_path]
    expected = {(c.model_path, c.input_width, c.input_height): c.p95_ms for c in candidates if c.p95_ms}

    def rung(art: Artifact, size: tuple[int, int], interval: int) -> Rung:
        return Rung(art.variant, str(art.path), size[0], size[1], interval,
                    expected.get((str(art.path), size[0], size[1])), art.capacity)

    size = (chosen.input_width, chosen.input_height)
    k_max = max(chosen.detect_interval, options.max_detect_interval)
    ladder = [rung(top, size, k) for k in range(chosen.detect_interval, k_max + 1)]
    area = size[0] * size[1]
    for smaller in reversed(top.input_sizes(LADDER_SIDES)):
        if smaller[0] * smaller[1] < area and min(smaller) >= options.min_ladder_side:
            ladder.append(rung(top, smaller, k_max))
            area = smaller[0] * smaller[1]
    for art in sorted(artifacts, key=lambda a: (-a.capacity, a.variant)):
        if art.capacity >= top.capacity:
            continue
        sizes = art.input_sizes(LADDER_SIDES + (ladder[-1].input_width,))
        fitting = [s for s in sizes if s[0] * s[1] <= area]
        if fitting:
            ladder.append(rung(art, fitting[-1], k_max))
            area = fitting[-1][0] * fitting[-1][1]
    return ladder


def controller_config(report: PlanReport, **overrides) -> ControllerConfig:
    """The runtime controller's config for a plan: its frame budget and the platform's thermal limits."""
    values = {"frame_budget_ms": report.options.frame_ms, "up_ratio": min(report.options.headroom, 0.85),
              **report.thermal, **overrides}
    return ControllerConfig(**values)


def make_controller(report: PlanReport, **overrides) -> RuntimeController:
    return RuntimeController(report.ladder, controller_config(report, **overrides))


def format_plan_report(report: PlanReport) -> str:
    """The plan for people: the device, every candidate with its latency, the choice and why."""
    o, p = report.options, report.plan
    lines = [f"device     {report.profile_summary}",
             (f"target     {o.target_fps:g} fps x {o.streams} stream(s): {o.frame_ms:.1f} ms per frame, "
             f"headroom {o.headroom:.0%}, detect at least every {o.max_detect_interval} frames"),
             f"source     {p.source}" + (f" (cache {report.cache_path})" if report.cache_path else ""), ""]
    width = max([24] + [len(c.model) for c in report.candidates])
    header = (f"  {'model':<{width}} {'backend':<12} {'prec':<5} {'input':>9} {'batch':>5} {'agree':>6} "
              f"{'p50 ms':>8} {'p95 ms':>8} {'every':>5}  status")
    lines.append(header)
    def ms(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    planned = (p.model_path, p.input_width, p.input_height)
    for c in report.candidates:
        mark = "*" if (c.model_path, c.input_width, c.input_height) == planned else " "
        fits = str(c.fits_interval) if c.fits_interval else "-"  # fits when detecting every Nth frame
        status = c.status + (f": {c.note}" if c.note else "")
        size = f"{c.input_width:>4}x{c.input_height:<4}"
        agree = f"{c.agreement:.3f}" if c.agreement is not None else "-"
        lines.append(f"{mark} {c.model:<{width}} {c.backend:<12} {c.precision:<5} {size} "
                     f"{c.batch:>5} {agree:>6} {ms(c.p50_ms):>8} {ms(c.p95_ms):>8} {fits:>5}  {status}")
    for r in report.rejected:
        lines.append(f"  rejected {r.path}: {r.reason}")
    lines += ["", (f"plan       {p.model} ({p.backend} {p.precision}) {p.input_width}x{p.input_height}, "
                  f"batch {p.batch}, detect every {p.detect_interval} frame(s), "
                  f"budget {p.latency_budget_ms:.1f} ms per call"),
              f"why        {p.reason}",
              "ladder     " + " -> ".join(r.label() for r in report.ladder)]
    return "\n".join(lines)
