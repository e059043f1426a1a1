"""Loading the runtime controller's next detector in the background (`edge-agent run --auto-plan`).

When the controller steps to a rung with another model or input size, its detector loads on a
worker thread while the loop keeps detecting with the running one; the loop takes it between two
ticks. A rung whose detector fails to load is not tried again (until a deployment changes the
model file); one the controller left while it loaded is closed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from edgefleet.adaptive.controller import Rung
from edgefleet.models.base import Detector

logger = logging.getLogger(__name__)

Key = tuple[str, tuple[int, int]]
"""A detector's identity here: model path and input size."""


def _key(rung: Rung) -> Key:
    return rung.model_path, rung.input_size


class RungLoader:
    """`request(rung)` starts loading its detector unless it runs, is loading, or failed before;
    `take(rung)` returns the detector once loaded for that (current) rung, else None."""

    def __init__(self, load: Callable[[Rung], Detector], running: Rung):
        self._load = load
        self.loaded: Key = _key(running)
        """What the loop's detector is (model path, input size)."""
        self._building: tuple[Rung, Future] | None = None
        self._failed: set[Key] = set()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> Future | None:
        """The load in flight, if any."""
        return self._building[1] if self._building is not None else None

    def request(self, rung: Rung) -> None:
        key = _key(rung)
        if self._building is not None or key == self.loaded or key in self._failed:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector-load")
        logger.info("loading %s at %dx%d in the background", rung.model, *rung.input_size)
        self._building = (rung, self._pool.submit(self._load, rung))

    def take(self, current: Rung) -> Detector | None:
        """The detector for `current` if it finished loading (the caller swaps it in); then the next
        load, if `current` still needs one."""
        if self._building is None or not self._building[1].done():
            return None
        rung, future = self._building
        self._building = None
        key, detector = _key(rung), None
        try:
            built = future.result()
        except Exception as err:  # noqa: BLE001 - a rung that cannot load keeps the running detector
            self._failed.add(key)
            logger.error("loading %s at %dx%d failed, keeping the running detector: %s", rung.model,
                         *rung.input_size, err)
        else:
            if key == _key(current):
                detector, self.loaded = built, key
            else:
                built.close()  # the controller moved on while it loaded
        self.request(current)
        return detector

    def retarget(self, loaded: Key) -> None:
        """The loop now runs another model file (a deployment): failures of the old one no longer count."""
        self.loaded = loaded
        self._failed.clear()

    def stop(self) -> None:
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        if self._building is not None and self._building[1].exception() is None:
            self._building[1].result().close()
        self._building = None
