"""Timing candidate variants on real frames, and the cache that keeps those timings.

One candidate is one artifact at one input size and batch. `measure` loads it through a
detector factory, warms it up, and times `detect_batch` (pre-processing, inference and
post-processing: what the loop pays per call) on the frames given, with an injectable timer,
so tests drive it with a fake detector and a fake clock.

The cache is a JSON file keyed by artifact sha256 + profile fingerprint + size + batch: a new
artifact, another power mode or a driver update is a miss and is measured again.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from edgefleet.models.manifest import atomic_write_bytes

from .artifacts import Artifact

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_CACHE_ENTRIES = 512


class TimedDetector(Protocol):
    def detect_batch(self, frames: list[np.ndarray]) -> list: ...


DetectorFactory = Callable[[Artifact, tuple[int, int], int], TimedDetector]
"""(artifact, (width, height), batch) -> a ready (warmed-up) detector."""
Timer = Callable[[], float]
"""Seconds, monotonic: time.perf_counter, or a test's fake clock."""


def load_real_detector(artifact: Artifact, input_size: tuple[int, int], batch: int) -> TimedDetector:
    """The default factory: the artifact's own backend (models.load_detector) at `input_size`."""
    from edgefleet.models import load_detector

    return load_detector(artifact.path, input_size=input_size)


@dataclass(frozen=True)
class Measurement:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    calls: int
    measured_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure(artifact: Artifact, input_size: tuple[int, int], batch: int, frames: Sequence[np.ndarray],
            factory: DetectorFactory = load_real_detector, timer: Timer = time.perf_counter,
            warmup_calls: int = 1) -> Measurement:
    """Time one candidate: one `detect_batch` call of `batch` frames per frame given.

    Raises whatever loading or running the detector raises (the caller records it as failed).
    """
    if not frames:
        raise ValueError("measure needs at least one frame")
    detector = factory(artifact, input_size, batch)
    try:
        def batch_at(i: int) -> list[np.ndarray]:
            return [frames[(i + j) % len(frames)] for j in range(batch)]

        for i in range(warmup_calls):
            detector.detect_batch(batch_at(i))
        times = []
        for i in range(len(frames)):
            chunk = batch_at(i)
            start = timer()
            detector.detect_batch(chunk)
            times.append((timer() - start) * 1000.0)
    finally:
        close = getattr(detector, "close", None)
        if close is not None:
            close()
    ms = np.asarray(times, dtype=np.float64)
    return Measurement(p50_ms=round(float(np.percentile(ms, 50)), 3),
                       p95_ms=round(float(np.percentile(ms, 95)), 3),
                       mean_ms=round(float(ms.mean()), 3), calls=len(times),
                       measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def cache_key(artifact_sha256: str, fingerprint: str, input_size: tuple[int, int], batch: int) -> str:
    return f"{artifact_sha256}:{fingerprint}:{input_size[0]}x{input_size[1]}:b{batch}"


class CalibrationCache:
    """Measurements by `cache_key`, in a JSON file. A missing or unreadable file is an empty
    cache (logged), never an error: the worst case is measuring again."""

    def __init__(self, path: Path | None, entries: dict[str, Measurement] | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, Measurement] = dict(entries or {})
        self.dirty = False

    @classmethod
    def load(cls, path: Path | str | None) -> CalibrationCache:
        if path is None:
            return cls(None)
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as err:
            logger.warning("calibration cache %s unreadable (%s); measuring again", path, err)
            return cls(path)
        entries = {}
        if (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                and isinstance(data.get("entries"), dict)):
            for key, value in data["entries"].items():
                try:
                    entries[key] = Measurement(**value)
                except TypeError:
                    logger.warning("calibration cache %s: dropping malformed entry %s", path, key)
        else:
            logger.warning("calibration cache %s has another format; measuring again", path)
        return cls(path, entries)

    def get(self, key: str) -> Measurement | None:
        return self.entries.get(key)

    def put(self, key: str, measurement: Measurement) -> None:
        self.entries[key] = measurement
        self.dirty = True

    def save(self) -> None:
        """Write atomically; keeps the newest MAX_CACHE_ENTRIES entries."""
        if self.path is None or not self.dirty:
            return
        by_age = sorted(self.entries.items(), key=lambda kv: kv[1].measured_at, reverse=True)
        newest = by_age[:MAX_CACHE_ENTRIES]
        data = {"version": CACHE_VERSION, "entries": {k: m.to_dict() for k, m in sorted(newest)}}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode())
        self.dirty = False
