"""Frame sources: a reader thread per source, so decoding overlaps detection.

Files give every frame (the reader waits for the consumer); live sources (camera index,
RTSP/HTTP URL) keep only the newest frame and count the ones the consumer never saw.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import SourceError

logger = logging.getLogger(__name__)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR, HxWx3 uint8
    capture_time: float  # unix seconds


class Source:
    """`start()` opens and spawns the reader; `read()` returns the next Frame or None at the end."""

    live = False

    def __init__(self, spec: str, capture_arg):
        self.spec = spec
        self._capture_arg = capture_arg
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: cv2.VideoCapture | None = None
        self.frames_read = 0
        self.frames_dropped = 0
        self.error: str | None = None
        self.width = self.height = 0
        self.fps = 0.0

    def start(self) -> None:
        cap = cv2.VideoCapture(self._capture_arg)
        if not cap.isOpened():
            raise SourceError(f"source {self.spec!r}: cannot be opened (not a readable video or stream)")
        self._cap = cap
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._thread = threading.Thread(target=self._run, name=f"source:{self.spec}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _run(self) -> None:
        index = 0
        try:
            while not self._stop.is_set():
                ok, image = self._cap.read()
                if not ok:
                    break
                self.frames_read += 1
                self._deliver(Frame(index, image, time.time()))
                index += 1
        except cv2.error as err:  # corrupt input must not kill the process
            self.error = str(err)
            logger.warning("source %s: decode error: %s", self.spec, err)
        finally:
            self._deliver(None)

    def _deliver(self, frame: Frame | None) -> None:
        raise NotImplementedError

    def read(self, timeout: float = 1.0) -> Frame | None:
        raise NotImplementedError


class FileSource(Source):
    """Every frame, in order; the reader stays a few frames ahead."""

    def __init__(self, spec: str, path: Path, prefetch: int = 4):
        super().__init__(spec, str(path))
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._ended = False

    def _deliver(self, frame: Frame | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None at the end of the file. Raises TimeoutError when none is ready."""
        if self._ended:
            return None
        try:
            frame = self._queue.get(timeout=timeout)
        except queue.Empty as err:
            raise TimeoutError(f"source {self.spec!r}: no frame within {timeout}s") from err
        if frame is None:
            self._ended = True
        return frame


class LiveSource(Source):
    """Only the newest frame is kept; frames overwritten before they were read count as dropped."""

    live = True

    def __init__(self, spec: str, capture_arg):
        super().__init__(spec, capture_arg)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False

    def _deliver(self, frame: Frame | None) -> None:
        with self._cond:
            if frame is None:
                self._ended = True
            else:
                if self._latest is not None:
                    self.frames_dropped += 1
                self._latest = frame
            self._cond.notify_all()

    def read(self, timeout: float = 1.0) -> Frame | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._latest is not None or self._ended, timeout):
                raise TimeoutError(f"source {self.spec!r}: no frame within {timeout}s")
            frame, self._latest = self._latest, None
            return frame


def open_source(spec: str) -> Source:
    """A camera index ("0"), a URL (rtsp://, http://, ...) or a video file path."""
    spec = spec.strip()
    if not spec:
        raise SourceError("source is empty")
    if spec.isdigit():
        return LiveSource(spec, int(spec))
    if _URL.match(spec):
        return LiveSource(spec, spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"source {spec!r}: no such file")
    if path.is_dir():
        raise SourceError(f"source {spec!r}: is a directory; give a video file, camera index or URL")
    return FileSource(spec, path)
