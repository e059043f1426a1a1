"""Adaptation between ticks (`edge-agent run --auto-plan`): the runtime controller, its rungs'
detectors, operator overrides as its ladder; and the time the loop spent at each rung.

The supervisor (agent.supervisor) asks the `Adapter` once a tick: a detector that finished
loading for the current rung (`take_detector`), and once every `every_s` a step (`step`). A new
detect interval applies to every stream at once; a new input size or model loads on the
RungLoader's worker thread and is swapped in between ticks, so the loop never waits for a model.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgefleet.adaptive.controller import ControllerEvent, HealthReading, Rung, RuntimeController
from edgefleet.models.base import Detector

from .messages import PlanOverride
from .options import Adaptation
from .overrides import override_ladder
from .rung_loader import RungLoader

logger = logging.getLogger(__name__)


class Adapter:
    """The runtime controller of an `Adaptation`, over the ladder the plan (or an operator) gives it."""

    def __init__(self, adaptation: Adaptation):
        self.controller: RuntimeController = adaptation.controller
        self.every_s = adaptation.every_s
        self.temperature = adaptation.temperature
        self.rungs = RungLoader(adaptation.load_detector, adaptation.controller.rung)
        self.planned: list[Rung] = list(adaptation.controller.ladder)
        """The ladder before any operator override: what `clear` returns to."""
        self.events: list[ControllerEvent] = []
        self._last_reading = 0.0

    @property
    def rung(self) -> Rung:
        return self.controller.rung

    def start(self, now: float) -> None:
        self._last_reading = now

    def stop(self) -> None:
        self.rungs.stop()

    def take_detector(self) -> Detector | None:
        """The current rung's detector, once it finished loading (the caller swaps it in)."""
        return self.rungs.take(self.controller.rung)

    def request_detector(self) -> None:
        """Start loading the current rung's detector unless it runs, is loading, or failed before."""
        self.rungs.request(self.controller.rung)

    def step(self, now: float, reading: Callable[[], HealthReading]) -> ControllerEvent | None:
        """Once every `every_s`: the controller's answer to a health reading (None: stay)."""
        if now - self._last_reading < self.every_s:
            return None
        self._last_reading = now
        health = reading()
        event = self.controller.update(health, now)
        if event is not None:
            self.events.append(event)
            logger.info("controller: step %s (%s) to rung %d, %s: %s; fps %.1f, detector p95 %.1f ms",
                        event.direction, event.cause, event.to_rung, event.rung.label(), event.reason,
                        health.fps, health.inference_ms_p95)
        return event

    def override(self, override: PlanOverride) -> None:
        """An operator's pin or bounds become the controller's ladder (`clear`: the planned one).
        Raises LadderError, changing nothing, when no rung fits."""
        controller = self.controller
        ladder = self.planned if override.clear else override_ladder(self.planned, controller.rung, override)
        start = ladder.index(controller.rung) if controller.rung in ladder else 0
        self.controller = RuntimeController(ladder, controller.config, start)

    def retarget(self, name: str, path: str, input_size: tuple[int, int]) -> None:
        """A deployment swapped in another model file: every rung keeps its size and interval, with it."""
        def retargeted(ladder: list[Rung]) -> list[Rung]:
            return [replace(r, model=name, model_path=path, expected_ms=None) for r in ladder]

        controller = self.controller
        self.controller = RuntimeController(retargeted(controller.ladder), controller.config, controller.state.rung)
        self.planned = retargeted(self.planned)
        self.rungs.retarget((path, input_size))


@dataclass
class RungSpan:
    """Where the loop ran from `since`: a rung's label (or "every N" without the controller)."""
    rung: str
    since: float
    frames0: int
    frames: int = 0
    seconds: float = 0.0


class RungHistory:
    """One span per rung the loop ran at, with the frames and seconds spent there (`counted()`:
    the frames the loop has handled so far)."""

    def __init__(self, counted: Callable[[], int]):
        self._counted = counted
        self.spans: list[RungSpan] = []

    def enter(self, label: str, now: float) -> None:
        self.spans.append(RungSpan(label, now, self._counted()))

    def close(self, now: float) -> None:
        if self.spans:
            span = self.spans[-1]
            span.frames = self._counted() - span.frames0
            span.seconds = round(now - span.since, 2)
