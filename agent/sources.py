"""Frame sources: a reader thread per source, so decoding overlaps detection.

Files, image folders and synthetic scenes give every frame (the reader waits for the
consumer, a few frames ahead) at pace "fast", the default. At pace "realtime" a video file plays at
its frame rate and an image folder at `folder_fps`, as a camera would: the reader delivers each
frame at its time on a clock started with the first, keeps only the newest frame for the consumer,
and counts the ones the consumer was too slow to take (`frames_dropped`); synthetic scenes stay
fast. Live sources (camera index, RTSP/HTTP URL) keep only the
newest frame, count the ones the consumer never saw, and reconnect with backoff when the
stream fails; frame indices keep counting across reconnects.

Specs accepted by `open_source`: "0" (camera index), "rtsp://…", "http(s)://…", a video
file, a folder of images (or one image), "synthetic://640x480?objects=5&frames=300".
"""
from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from .errors import SourceError

logger = logging.getLogger(__name__)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

Pace = Literal["fast", "realtime"]
FALLBACK_FPS = 25.0
"""The rate a realtime video file plays at when its container gives none, or one outside 1-240."""


@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR, HxWx3 uint8
    capture_time: float  # unix seconds


# ---- readers: blocking, single-threaded, None at the end ----

STREAM_TIMEOUT_S = 10.0
"""A network stream (rtsp://, http://) that sends nothing for this long, or does not open within it,
counts as lost and is reconnected. OpenCV's own default is 30 s, with a camera that hangs rather
than hangs up the agent sat that long on a frozen stream."""


class VideoReader:
    def __init__(self, spec: str, capture_arg, timeout_s: float | None = None):
        """`timeout_s`: open and read timeout for network streams (FFmpeg's interrupt callback);
        None keeps OpenCV's default."""
        self.spec, self._arg, self._timeout_s = spec, capture_arg, timeout_s
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self._timeout_s is None:
            cap = cv2.VideoCapture(self._arg)
        else:
            ms = int(self._timeout_s * 1000)
            cap = cv2.VideoCapture(self._arg, cv2.CAP_ANY,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"source {self.spec!r}: cannot be opened (not a readable video or stream)")
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:  # not open, or closed under it (a stop whose join timed out): the end
            return None
        ok, image = self._cap.read()
        return image if ok else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def fps(self) -> float:
        """The frame rate the container states (CAP_PROP_FPS), after `open()`; 0 when it states none."""
        value = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0.0
        return float(value) if value == value else 0.0  # NaN: none

    def probe(self) -> str:
        """For a file, after `open()`: "" when a first frame decodes, else why not; the file is opened
        again, so reading starts at its first frame."""
        if self.read() is not None:
            self.close()
            self.open()
            return ""
        return "no frame can be decoded from it (not a video OpenCV can read, or empty)"


class FolderReader:
    """Images in name order; unreadable files are skipped with a warning."""

    def __init__(self, spec: str, files: list[Path]):
        self.spec, self._files, self._next = spec, files, 0

    def open(self) -> None:
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            logger.warning("source %s: skipping unreadable image %s", self.spec, path.name)
        return None

    def close(self) -> None:
        pass

    def probe(self) -> str:
        """"" when an image decodes (reading then starts at the first file again), else why not."""
        found = self.read() is not None
        self._next = 0
        return "" if found else f"none of its {len(self._files)} image file(s) can be decoded"


class SyntheticReader:
    """Coloured boxes moving in straight lines and bouncing off the edges; seeded, so repeatable."""

    def __init__(self, spec: str, width: int, height: int, objects: int, frames: int, seed: int):
        self.spec, self.width, self.height = spec, width, height
        self.objects, self.frames, self.seed = objects, frames, seed
        self._count = 0

    def open(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._size = rng.uniform(0.05, 0.2, (self.objects, 2)) * (self.width, self.height)
        self._pos = rng.uniform(0, 1, (self.objects, 2)) * ((self.width, self.height) - self._size)
        self._vel = rng.uniform(-6, 6, (self.objects, 2))
        self._colour = rng.integers(40, 255, (self.objects, 3))
        self._count = 0

    def read(self) -> np.ndarray | None:
        if self.frames and self._count >= self.frames:
            return None
        self._count += 1
        image = np.full((self.height, self.width, 3), 90, np.uint8)
        limit = np.array([self.width, self.height]) - self._size
        self._pos += self._vel
        bounce = (self._pos < 0) | (self._pos > limit)
        self._vel[bounce] *= -1
        self._pos = np.clip(self._pos, 0, limit)
        for (x, y), (w, h), colour in zip(self._pos.astype(int), self._size.astype(int), self._colour.tolist()):
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness=-1)
        return image

    def close(self) -> None:
        pass


# ---- the threaded source ----

class Source:
    """`start()` opens and spawns the reader thread; `read()` returns the next Frame, or None at the
    end. `start(notify=event)` sets `event` whenever a frame (or the end) is delivered, so that one
    thread can wait for whichever of several sources has something first."""

    def __init__(self, spec: str, reader, live: bool, prefetch: int = 4,
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 10.0, fps: float = 0.0):
        """`fps` > 0 (a file or folder at pace realtime): frame i is delivered at i/fps seconds after the
        first, and only the newest frame is kept for the consumer, as from a live source; the source is
        still not live (it ends, and --loop restarts it, rather than reconnecting)."""
        self.spec = spec
        self.live = live
        self.fps = fps
        self._latest_only = live or fps > 0
        self._reader = reader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notify: threading.Event | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._reconnect = (reconnect_initial_s, reconnect_max_s)
        self._delay = reconnect_initial_s
        self._frames_at_reconnect = -1
        self.state = "new"
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.error: str | None = None

    def start(self, notify: threading.Event | None = None) -> None:
        """Open the source and start its reader; SourceError when it cannot be opened, or (a file or an
        image folder) when it yields no frame at all. A live source is never probed: a camera that is
        slow to send its first frame is not refused, it is waited for and reconnected."""
        self._notify = notify
        self._reader.open()  # raises SourceError with the reason
        probe = getattr(self._reader, "probe", None)
        why = probe() if probe is not None and not self.live else ""
        if why:
            self._reader.close()
            raise SourceError(f"source {self.spec!r} yields no frame: {why}")
        self.state = "running"
        self._thread = threading.Thread(target=self._run, name=f"source:{self.spec}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._reader.close()

    def _run(self) -> None:
        index = 0
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    image = self._reader.read()
                except cv2.error as err:  # a corrupt frame must not kill the process
                    self.error = str(err)
                    logger.warning("source %s: decode error: %s", self.spec, err)
                    image = None
                if image is None:
                    if self.live and self._reopen():
                        continue
                    break
                self.frames_read += 1
                if self.fps > 0 and self._stop.wait(max(0.0, started + index / self.fps - time.monotonic())):
                    break
                self._deliver(Frame(index, image, time.time()))
                index += 1
        finally:
            if self.state != "failed":
                self.state = "ended"
            self._deliver(None)

    def _reopen(self) -> bool:
        """A live stream failed: reconnect with exponential backoff until it works or we stop.

        The delay keeps growing across reconnects that deliver no frame (a camera that opens
        but sends nothing), and starts over once a frame arrives.
        """
        self.state = "reconnecting"
        initial, maximum = self._reconnect
        delay = initial if self.frames_read > self._frames_at_reconnect else min(maximum, self._delay * 2)
        self._frames_at_reconnect = self.frames_read
        while not self._stop.is_set():
            logger.warning("source %s: stream lost; reconnecting in %.1fs", self.spec, delay)
            if self._stop.wait(random.uniform(delay / 2, delay)):
                return False
            self._reader.close()
            try:
                self._reader.open()
            except SourceError as err:
                self.error = str(err)
                delay = min(maximum, delay * 2)
                continue
            self._delay = delay
            self.reconnects += 1
            self.state = "running"
            logger.info("source %s: reconnected", self.spec)
            return True
        return False

    def _deliver(self, frame: Frame | None) -> None:
        if self._latest_only:
            with self._cond:
                if frame is None:
                    self._ended = True
                else:
                    if self._latest is not None:
                        self.frames_dropped += 1
                    self._latest = frame
                self._cond.notify_all()
        else:
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.2)
                    break
                except queue.Full:
                    continue
        if self._notify is not None:
            self._notify.set()

    def read(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None at the end. Raises TimeoutError when none is ready in time."""
        if self._latest_only:
            with self._cond:
                if not self._cond.wait_for(lambda: self._latest is not None or self._ended, timeout):
                    raise TimeoutError(f"source {self.spec!r}: no frame within {timeout}s")
                frame, self._latest = self._latest, None
                return frame
        if self._ended:
            return None
        try:
            frame = self._queue.get(timeout=timeout)
        except queue.Empty as err:
            raise TimeoutError(f"source {self.spec!r}: no frame within {timeout}s") from err
        if frame is None:
            self._ended = True
        return frame


def _synthetic(spec: str) -> SyntheticReader:
    parsed = urlparse(spec)
    try:
        width, height = (int(v) for v in (parsed.netloc or "640x480").lower().split("x"))
        query = {k: int(v[-1]) for k, v in parse_qs(parsed.query).items()}
    except ValueError as err:
        raise SourceError(f"source {spec!r}: expected synthetic://WIDTHxHEIGHT?objects=N&frames=N&seed=N") from err
    unknown = set(query) - {"objects", "frames", "seed"}
    if unknown:
        raise SourceError(f"source {spec!r}: unknown option(s) {sorted(unknown)}")
    if width < 32 or height < 32:
        raise SourceError(f"source {spec!r}: size must be at least 32x32")
    return SyntheticReader(spec, width, height, query.get("objects", 5), query.get("frames", 300), query.get("seed", 0))


def _video_fps(reader: VideoReader) -> float:
    """The file's frame rate for pace realtime (opens and closes it): FALLBACK_FPS when the container
    states none or a rate no camera has, with a warning."""
    reader.open()
    try:
        fps = reader.fps()
    finally:
        reader.close()
    if 1.0 <= fps <= 240.0:
        return fps
    logger.warning("source %s: frame rate %r is missing or implausible; playing at %.0f fps",
                   reader.spec, fps, FALLBACK_FPS)
    return FALLBACK_FPS


def open_source(spec: str, pace: Pace = "fast", folder_fps: float = 1.0) -> Source:
    """A Source for a camera index, URL, video file, image folder/file or synthetic scene.

    `pace` applies to files and folders only: "fast" gives every frame as fast as it is read,
    "realtime" plays a video at its frame rate and a folder at `folder_fps` images a second."""
    spec = spec.strip()
    if not spec:
        raise SourceError("source is empty")
    if spec.isdigit():
        return Source(spec, VideoReader(spec, int(spec)), live=True)
    if spec.lower().startswith("synthetic://"):
        return Source(spec, _synthetic(spec), live=False)
    if _URL.match(spec):
        return Source(spec, VideoReader(spec, spec, timeout_s=STREAM_TIMEOUT_S), live=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"source {spec!r}: no such file")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = [path] if path.is_file() else sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"source {spec!r}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return Source(spec, FolderReader(spec, files), live=False, fps=folder_fps if pace == "realtime" else 0.0)
    reader = VideoReader(spec, str(path))
    return Source(spec, reader, live=False, fps=_video_fps(reader) if pace == "realtime" else 0.0)
