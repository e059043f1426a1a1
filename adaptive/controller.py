"""The runtime controller: a closed loop on measured latency, dropped frames and temperature.

The detect-and-track loop runs at one *rung* of a ladder, ordered from the best quality the
plan chose (rung 0) to the cheapest: detect interval up first, then input size down, then a
smaller model (adaptive.plan.controller_ladder builds it). Once a second the agent hands the
controller a `HealthReading`; the controller moves down when over budget, back up when the
rung above would fit with room to spare, and says why in a `ControllerEvent`.

Policy is one pure function, `decide(state, reading, now, ladder, config)`; no clock, no I/O.
What keeps it from oscillating:
- a smoothed load (median of the last `window` readings of p95 / budget: one spike never moves
  it) with a hysteresis band: over budget above `over_ratio`, cleared only below `clear_ratio`;
  in between, the over-budget timer keeps running, but a step down needs the load over now;
- persistence: over budget for `step_down_after_s` before a step down, headroom for
  `step_up_after_s` before a step up (longer: going up is the risky direction);
- after any change, readings are ignored for `settle_s` (the health window still holds the
  old rung's latencies) and nothing changes for `min_dwell_s`;
- a step up predicts the latency of the rung above from the worst recent reading and the
  calibrated (or estimated) cost ratio, and needs it under `up_ratio` of that rung's budget
  for the whole of `step_up_after_s`;
- a step up that is undone within `failed_up_window_s` doubles the wait before the next try.
Thermal: at `thermal_warn_c` for `thermal_after_s` it steps down while latency is still fine
(before the SoC's own throttling makes it worse); at `thermal_critical_c` it steps down at once;
it never steps up until the temperature is under `thermal_clear_c`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from .errors import LadderError


@dataclass(frozen=True)
class Rung:
    model: str                  # variant name, "yolov8n-int8"
    model_path: str
    input_width: int
    input_height: int
    detect_interval: int
    expected_ms: float | None = None
    """Calibrated p95 of one detector call at this model and size; None: not measured."""
    capacity: int = 0
    """log2 of the model's parameter count (adaptive.artifacts.Artifact.capacity)."""

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_width, self.input_height

    def label(self) -> str:
        return f"{self.model} {self.input_width}x{self.input_height} every {self.detect_interval}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rung:
        return cls(**data)


def cost_ratio(a: Rung, b: Rung) -> float:
    """Estimated cost of one detector call at `b` relative to `a`: calibrated latencies when both
    are known, else pixels x 2^(capacity difference). The detect interval does not change a call."""
    if a.expected_ms and b.expected_ms:
        return b.expected_ms / a.expected_ms
    area = (b.input_width * b.input_height) / max(a.input_width * a.input_height, 1)
    return area * 2.0 ** (b.capacity - a.capacity)


def rung_changes(a: Rung, b: Rung) -> tuple[str, ...]:
    """What the agent must apply to go from `a` to `b`: "model", "input_size", "detect_interval"."""
    changes = []
    if a.model_path != b.model_path:
        changes.append("model")
    if a.input_size != b.input_size:
        changes.append("input_size")
    if a.detect_interval != b.detect_interval:
        changes.append("detect_interval")
    return tuple(changes)


def bounded_ladder(ladder: Sequence[Rung], max_input_size: int = 0, min_detect_interval: int = 0,
                   max_detect_interval: int = 0) -> list[Rung]:
    """The rungs within an operator's bounds (edgefleet.v1.SetPlan; 0: unbounded), in order.
    Rungs above the input bound are dropped; detect intervals are clamped into their bounds
    (duplicates that makes are dropped), so the size and model steps survive."""
    if min_detect_interval and max_detect_interval and min_detect_interval > max_detect_interval:
        raise LadderError(f"min_detect_interval={min_detect_interval} > "
                          f"max_detect_interval={max_detect_interval}")
    bounded: list[Rung] = []
    for rung in ladder:
        if max_input_size and max(rung.input_size) > max_input_size:
            continue
        interval = max(rung.detect_interval, min_detect_interval or 1)
        if max_detect_interval:
            interval = min(interval, max_detect_interval)
        rung = replace(rung, detect_interval=interval)
        if rung not in bounded:
            bounded.append(rung)
    if not bounded:
        raise LadderError(f"no rung fits max_input_size={max_input_size}, min_detect_interval="
                          f"{min_detect_interval}, max_detect_interval={max_detect_interval}")
    return bounded


@dataclass(frozen=True)
class ControllerConfig:
    frame_budget_ms: float
    """Time per frame at the target rate (1000 / target fps). A rung's budget for one detector
    call is this times its detect interval."""
    step_down_after_s: float = 3.0
    """Over budget this long (smoothed) before a step down. Lower reacts faster to a slowdown and
    steps on shorter bursts; higher rides out bursts and drops frames meanwhile."""
    step_up_after_s: float = 30.0
    """Lasting headroom needed before a step up (doubles after each step up that failed)."""
    min_dwell_s: float = 10.0
    """No change sooner than this after the previous one (critical temperature excepted)."""
    settle_s: float = 5.0
    """Readings this soon after a change are ignored: they still describe the old rung."""
    over_ratio: float = 1.0
    """Smoothed p95 / budget above this is over budget."""
    clear_ratio: float = 0.9
    """Below this the over-budget timer resets; between the two it keeps running (hysteresis)."""
    up_ratio: float = 0.8
    """Step up only while the rung above is predicted under this fraction of its budget. Keep it
    at most the plan's headroom, or the controller never climbs back to the plan's own rung."""
    window: int = 5
    """Readings the smoothed load is the median of. Longer rides out more noise, reacts later."""
    min_readings: int = 3
    """Readings needed (after a change) before the controller acts on latency or drops."""
    drop_tolerance: float = 0.05
    """Share of frames dropped at the source above which the loop counts as over budget."""
    thermal_warn_c: float = 80.0
    thermal_critical_c: float = 90.0
    thermal_clear_c: float = 75.0
    thermal_after_s: float = 5.0
    thermal_dwell_s: float = 60.0
    """Between two warm (not critical) thermal step downs: temperature follows load in tens of seconds."""
    up_backoff: float = 2.0
    failed_up_window_s: float = 60.0
    max_up_wait_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.frame_budget_ms > 0:
            raise LadderError(f"frame_budget_ms must be > 0, got {self.frame_budget_ms}")
        if not 0 < self.clear_ratio <= self.over_ratio:
            raise LadderError(f"need 0 < clear_ratio <= over_ratio, got {self.clear_ratio}, "
                              f"{self.over_ratio}")
        if not 0 < self.up_ratio < self.clear_ratio:
            raise LadderError(f"up_ratio must be in (0, clear_ratio={self.clear_ratio}), got "
                              f"{self.up_ratio}; "
                              "otherwise a step up lands over budget and steps back down")
        if not 1 <= self.min_readings <= self.window:
            raise LadderError(f"need 1 <= min_readings <= window, got {self.min_readings}, {self.window}")
        if not self.thermal_clear_c <= self.thermal_warn_c <= self.thermal_critical_c:
            raise LadderError("need thermal_clear_c <= thermal_warn_c <= thermal_critical_c, got "
                              f"{self.thermal_clear_c}, {self.thermal_warn_c}, {self.thermal_critical_c}")


THERMAL_LIMITS = {
    # platform_class: (clear, warn, critical) in C. A Pi's firmware throttles at 80 (85 hard);
    # Jetsons throttle in the mid 90s (junction); PCs vary, CPUs throttle near 100.
    "raspberry-pi": (70.0, 75.0, 80.0),
    "jetson": (80.0, 85.0, 95.0),
}


def thermal_limits(platform_class: str) -> dict[str, float]:
    clear, warn, critical = THERMAL_LIMITS.get(platform_class, (80.0, 85.0, 95.0))
    return {"thermal_clear_c": clear, "thermal_warn_c": warn, "thermal_critical_c": critical}


@dataclass(frozen=True)
class HealthReading:
    inference_ms_p95: float
    """p95 of one detector call over the health window; 0: no detector call in the window."""
    inference_ms_p50: float = 0.0
    fps: float = 0.0
    """Frames processed per second, all streams."""
    frames_dropped: int = 0
    """Cumulative frames the sources dropped (the loop did not keep up)."""
    temperature_c: float | None = None
    """Hottest thermal zone (adaptive.readers.hottest_c); None: unknown."""

    @classmethod
    def from_sample(cls, sample: dict, temperature_c: float | None = None) -> HealthReading:
        """From agent.health.HealthMonitor.sample() output."""
        return cls(inference_ms_p95=float(sample.get("inference_ms_p95", 0.0)),
                   inference_ms_p50=float(sample.get("inference_ms_p50", 0.0)),
                   fps=float(sample.get("fps", 0.0)), frames_dropped=int(sample.get("frames_dropped", 0)),
                   temperature_c=temperature_c)


@dataclass(frozen=True)
class ControllerState:
    rung: int = 0
    changed_at: float = -math.inf
    ratios: tuple[float, ...] = ()
    """The last `window` readings of detector p95 / the rung's budget, since the last change."""
    drop_shares: tuple[float, ...] = ()
    over_since: float | None = None
    headroom_since: float | None = None
    hot_since: float | None = None
    last_dropped: int | None = None
    last_time: float | None = None
    up_wait_s: float | None = None
    """Headroom needed before the next step up; None: the config's step_up_after_s."""
    last_up_at: float | None = None


@dataclass(frozen=True)
class ControllerEvent:
    time: float
    from_rung: int
    to_rung: int
    direction: str          # "down" | "up"
    cause: str              # "latency" | "drops" | "thermal" | "thermal-critical" | "headroom"
    reason: str
    rung: Rung
    changes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        data = asdict(self)
        data["changes"] = list(self.changes)
        return data


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _drop_share(state: ControllerState, reading: HealthReading, now: float) -> float:
    if state.last_dropped is None or state.last_time is None or now <= state.last_time:
        return 0.0
    dropped = max(0, reading.frames_dropped - state.last_dropped)
    processed = max(reading.fps, 0.0) * (now - state.last_time)
    total = dropped + processed
    return dropped / total if total > 0 else 0.0


def _hysteresis(since: float | None, now: float, on: bool, off: bool) -> float | None:
    """When a condition began: `now` when it starts, None once it has cleared, unchanged in between
    (the hysteresis band keeps counting, or keeps not counting)."""
    if on:
        return since if since is not None else now
    return None if off else since


def _step_down_cause(state: ControllerState, reading: HealthReading, now: float, config: ControllerConfig,
                     window: _Window) -> tuple[str, str] | None:
    """Why to step down now (cause, reason), or None. Temperature first, then latency and drops."""
    temp = reading.temperature_c
    if temp is not None and temp >= config.thermal_critical_c:
        return "thermal-critical", f"temperature {temp:.1f} C >= critical {config.thermal_critical_c:.0f} C"
    if (temp is not None and temp >= config.thermal_warn_c and window.hot_since is not None
            and now - window.hot_since >= config.thermal_after_s
            and now - state.changed_at >= max(config.min_dwell_s, config.thermal_dwell_s)):
        return "thermal", (f"temperature {temp:.1f} C >= {config.thermal_warn_c:.0f} C for "
                           f"{now - window.hot_since:.0f} s; stepping down before the SoC throttles")
    over_since = window.over_since
    if (now - state.changed_at < config.min_dwell_s or over_since is None
            or now - over_since < config.step_down_after_s):
        return None
    if window.over_latency:
        return "latency", (f"detector p95 {reading.inference_ms_p95:.1f} ms (median {window.load:.2f}x) over the "
                           f"{window.budget:.1f} ms budget for {now - over_since:.0f} s")
    if window.over_drops:
        return "drops", (f"{window.drops:.0%} of frames dropped (tolerance "
                         f"{config.drop_tolerance:.0%}) for {now - over_since:.0f} s")
    return None


@dataclass(frozen=True)
class _Window:
    """What the readings of the window say about the current rung (decide's working values)."""
    budget: float
    ratios: tuple[float, ...]
    shares: tuple[float, ...]
    load: float | None
    drops: float
    over_latency: bool
    over_drops: bool
    over_since: float | None
    hot_since: float | None


def _window(state: ControllerState, reading: HealthReading, now: float, current: Rung,
            config: ControllerConfig) -> _Window:
    budget = config.frame_budget_ms * current.detect_interval
    ratios = state.ratios
    if reading.inference_ms_p95 > 0:  # 0: no detector call in the health window, no evidence
        ratios = (ratios + (reading.inference_ms_p95 / budget,))[-config.window:]
    shares = (state.drop_shares + (_drop_share(state, reading, now),))[-config.window:]
    load = _median(ratios) if len(ratios) >= config.min_readings else None
    drops = _median(shares) if len(shares) >= config.min_readings else 0.0
    over_latency = load is not None and load > config.over_ratio
    over_drops = drops > config.drop_tolerance
    cleared = (load is None or load < config.clear_ratio) and drops <= config.drop_tolerance / 2
    temp = reading.temperature_c
    return _Window(budget, ratios, shares, load, drops, over_latency, over_drops,
                   _hysteresis(state.over_since, now, over_latency or over_drops, cleared),
                   _hysteresis(state.hot_since, now, temp is not None and temp >= config.thermal_warn_c,
                               temp is None or temp < config.thermal_clear_c))


def _headroom(state: ControllerState, reading: HealthReading, now: float, ladder: Sequence[Rung],
              config: ControllerConfig, window: _Window) -> tuple[float | None, float | None]:
    """(since when the rung above has had lasting headroom, its predicted load), or Nones."""
    if state.rung == 0 or window.load is None:
        return None, None
    current, above = ladder[state.rung], ladder[state.rung - 1]
    # lasting headroom: even the worst of the recent readings must leave room on the rung above
    predicted = max(window.ratios) * cost_ratio(current, above) * current.detect_interval / above.detect_interval
    temp = reading.temperature_c
    cool = temp is None or temp < config.thermal_clear_c
    if (predicted < config.up_ratio and window.drops <= config.drop_tolerance / 2 and cool
            and window.over_since is None and len(window.shares) >= config.min_readings):
        return (state.headroom_since if state.headroom_since is not None else now), predicted
    return None, predicted


def decide(state: ControllerState, reading: HealthReading, now: float, ladder: Sequence[Rung],
           config: ControllerConfig) -> tuple[ControllerState, ControllerEvent | None]:
    """One control step: the next state, and the change to make (None: stay)."""
    if not ladder:
        raise LadderError("the ladder is empty")
    tracked = replace(state, last_dropped=reading.frames_dropped, last_time=now)
    if now - state.changed_at < config.settle_s:
        return tracked, None
    window = _window(state, reading, now, ladder[state.rung], config)
    up_wait = state.up_wait_s if state.up_wait_s is not None else config.step_up_after_s
    # when the last change was a step up: when it came (else None)
    up_at = state.last_up_at if state.last_up_at is not None and state.changed_at == state.last_up_at else None
    if up_at is not None and now - up_at >= config.failed_up_window_s:
        up_wait = config.step_up_after_s  # the last step up held: the next one may come as soon
    headroom_since, predicted = _headroom(state, reading, now, ladder, config, window)
    nxt = replace(tracked, ratios=window.ratios, drop_shares=window.shares, over_since=window.over_since,
                  hot_since=window.hot_since, headroom_since=headroom_since, up_wait_s=up_wait)
    down = _step_down_cause(state, reading, now, config, window) if state.rung < len(ladder) - 1 else None
    if down is not None:
        failed_up = up_at is not None and now - up_at < config.failed_up_window_s
        wait = min(up_wait * config.up_backoff, config.max_up_wait_s) if failed_up else up_wait
        return _moved(nxt, state.rung + 1, now, wait, None, ladder, "down", *down)
    dwell_ok = now - state.changed_at >= config.min_dwell_s
    if headroom_since is not None and dwell_ok and now - headroom_since >= up_wait:
        above = ladder[state.rung - 1]
        reason = (f"headroom for {now - headroom_since:.0f} s: rung above predicted at {predicted:.2f}x "
                  f"of its {config.frame_budget_ms * above.detect_interval:.1f} ms budget "
                  f"(< {config.up_ratio:.2f})")
        return _moved(nxt, state.rung - 1, now, up_wait, now, ladder, "up", "headroom", reason)
    return nxt, None


def _moved(state: ControllerState, to: int, now: float, up_wait: float, up_at: float | None,
           ladder: Sequence[Rung], direction: str, cause: str,
           reason: str) -> tuple[ControllerState, ControllerEvent]:
    event = ControllerEvent(now, state.rung, to, direction, cause, reason, ladder[to],
                            rung_changes(ladder[state.rung], ladder[to]))
    keep_hot = direction == "down" and cause.startswith("thermal")
    moved = replace(state, rung=to, changed_at=now, ratios=(), drop_shares=(), over_since=None,
                    headroom_since=None, hot_since=state.hot_since if keep_hot else None,
                    up_wait_s=up_wait, last_up_at=up_at if up_at is not None else state.last_up_at)
    return moved, event


class RuntimeController:
    """`decide` with its state kept: what the agent holds.

        controller = RuntimeController(ladder, ControllerConfig(frame_budget_ms=1000 / 15))
        every second: event = controller.update(HealthReading.from_sample(sample, temp), time.monotonic())
        if event: apply event.rung (event.changes says what differs)
    """

    def __init__(self, ladder: Sequence[Rung], config: ControllerConfig, start: int = 0):
        if not ladder:
            raise LadderError("the ladder is empty")
        if not 0 <= start < len(ladder):
            raise LadderError(f"start rung {start} is outside the ladder (0..{len(ladder) - 1})")
        self.ladder = list(ladder)
        self.config = config
        self.state = ControllerState(rung=start)
        self.events: list[ControllerEvent] = []

    @property
    def rung(self) -> Rung:
        return self.ladder[self.state.rung]

    def update(self, reading: HealthReading, now: float) -> ControllerEvent | None:
        self.state, event = decide(self.state, reading, now, self.ladder, self.config)
        if event is not None:
            self.events.append(event)
        return event
