"""`LivePoller`: what the device screen asks the controller every couple of seconds while it is open.

Each round asks for every stream's latest annotated frame (GetFrame: the device answers, through
the controller), the device's zone and line counts since local midnight by stream (CountObjects),
and its newest objects (ListObjects). A call that fails leaves its part as it was and says why in
`errors`; the next round tries again. The screen takes the newest results with `take()`; the thread
never touches the UI.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ControllerError, Unimplemented
from .views import CountsView, PictureView, TrackedObjectView

logger = logging.getLogger(__name__)

POLL_S = 2.0
OBJECT_ROWS = 20
FRAME_WIDTH = 320
"""Pixels wide asked of the device: more than half blocks can show across a terminal, a small JPEG."""


def local_midnight(now: float) -> float:
    return dt.datetime.combine(dt.datetime.fromtimestamp(now).date(), dt.time()).timestamp()


@dataclass
class LiveResults:
    """A round's answers. `frames` by stream id; `errors` by part ("frame cam0", "counts", "objects")."""

    frames: dict[str, PictureView] = field(default_factory=dict)
    counts: CountsView | None = None
    objects: list[TrackedObjectView] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    rounds: int = 0


class LivePoller:
    def __init__(self, client, device_id: str, streams: Callable[[], tuple[str, ...]], poll_s: float = POLL_S,
                 clock: Callable[[], float] = time.time, frame_width: int = FRAME_WIDTH):
        """`streams()` says which streams to ask frames of (the device's, as the fleet state knows them)."""
        self.client = client
        self.device_id = device_id
        self.streams = streams
        self.poll_s = poll_s
        self.clock = clock
        self.frame_width = frame_width
        self._results = LiveResults()
        self._fresh = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"live-{self.device_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def rounds(self) -> int:
        """Rounds finished so far."""
        with self._lock:
            return self._results.rounds

    def take(self) -> LiveResults | None:
        """The results when a round finished since the last take; None otherwise."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return LiveResults(dict(self._results.frames), self._results.counts, self._results.objects,
                               dict(self._results.errors), self._results.rounds)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.1, self.poll_s - (time.monotonic() - started)))

    def poll_once(self) -> None:
        for stream in self.streams() or ("",):
            self._part(f"frame {stream}".strip(), functools.partial(self._frame, stream))
        self._part("counts", self._counts)
        self._part("objects", self._objects)
        with self._lock:
            self._results.rounds += 1
            self._fresh = True

    def _part(self, name: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Unimplemented:
            self._set_error(name, "this controller does not answer it (UNIMPLEMENTED)")
        except ControllerError as err:
            self._set_error(name, err.details or err.code)
        except Exception as err:  # noqa: BLE001 - a bad answer must not end the polling
            logger.exception("live %s of %s failed", name, self.device_id)
            self._set_error(name, f"{type(err).__name__}: {err}")
        else:
            with self._lock:
                self._results.errors.pop(name, None)

    def _set_error(self, name: str, message: str) -> None:
        with self._lock:
            self._results.errors[name] = message

    def _frame(self, stream: str) -> None:
        picture = self.client.get_frame(self.device_id, stream, max_width=self.frame_width)
        with self._lock:
            self._results.frames[stream or picture.stream_id] = picture

    def _counts(self) -> None:
        counts = self.client.count_objects(local_midnight(self.clock()), self.device_id, ("stream",))
        with self._lock:
            self._results.counts = counts

    def _objects(self) -> None:
        objects = self.client.list_objects(self.device_id, OBJECT_ROWS)
        with self._lock:
            self._results.objects = objects
