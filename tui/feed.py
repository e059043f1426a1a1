"""Threads that keep a stream from the controller open, reconnecting with backoff.

`FleetFeed` follows WatchFleet into a `Coalescer`: on each (re)connect it lists the devices
(which also proves the controller answers and takes the token), hands that over as the
whole fleet, then streams changes. When the controller goes away it reports the loss,
waits, and tries again, for as long as it runs. `DetectionFeed` does the same for one
device's WatchDetections. Neither ever touches the UI.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from .coalesce import Coalescer
from .errors import ControllerError, Refused, Unavailable
from .views import Connection, Dropped, EventEntry, FrameView

logger = logging.getLogger(__name__)


class Backoff:
    """Delays between attempts: `initial_s`, doubling up to `max_s`, each with ±`jitter` spread.

    A lower `max_s` notices a returning controller sooner and costs more dials while it is down.
    """

    def __init__(self, initial_s: float = 0.5, max_s: float = 10.0, jitter: float = 0.2):
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.max_s, self.initial_s * 2 ** self.attempt)
        self.attempt += 1
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.attempt = 0


class _StreamThread:
    """Runs `_session()` over and over on a daemon thread until `stop()`."""

    name = "stream"

    def __init__(self, backoff: Backoff | None = None):
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _open(self, open_stream):
        """Open a stream so that `stop()` can cancel it; None when stopping already."""
        with self._lock:
            if self._stop.is_set():
                return None
            self._stream = open_stream()
            return self._stream

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
                error: ControllerError = Unavailable(self.name, "UNAVAILABLE", "the stream ended")
            except ControllerError as err:
                error = err
            except Exception as err:
                logger.exception("%s failed; restarting it", self.name)
                error = ControllerError(self.name, "INTERNAL", f"{type(err).__name__}: {err}")
            finally:
                with self._lock:
                    self._stream = None
            if self._stop.is_set():
                return
            if isinstance(error, Refused):  # retrying cannot help: the token stays what it is
                self._refused(error)
                return
            if time.monotonic() - started > self.backoff.max_s:
                self.backoff.reset()  # it was up for a while: this is a fresh outage
            delay = self.backoff.next()
            self._lost(error, delay)
            self._stop.wait(delay)

    def _session(self) -> None:
        raise NotImplementedError

    def _lost(self, err: ControllerError, delay: float) -> None:
        logger.info("%s: %s; retrying in %.1f s", self.name, err, delay)

    def _refused(self, err: ControllerError) -> None:
        logger.error("%s: the controller refused the operator token: %s; not retrying", self.name, err)


class FleetFeed(_StreamThread):
    """WatchFleet -> `sink`, reconnecting with backoff. `clock` stamps connection events."""

    name = "fleet-feed"

    def __init__(self, client, sink: Coalescer, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(backoff)
        self.client = client
        self.sink = sink
        self.clock = clock
        self._was_connected = False

    def start(self) -> None:
        self.sink.put(Connection("connecting", self.client.address))
        super().start()

    def _session(self) -> None:
        devices = self.client.list_devices()
        stream = self._open(self.client.watch_fleet)
        if stream is None:
            return
        self.sink.snapshot(devices)
        self.sink.put(Connection("connected", self.client.address))
        self.sink.put(EventEntry(self.clock(), "connection", f"connected to the controller at {self.client.address}"))
        self._was_connected = True
        dropped = 0  # a running total per stream, repeated on every event after the first drop
        for item in stream:
            if self.stopped:
                return
            if isinstance(item, Dropped):
                if item.total <= dropped:
                    continue
                dropped = item.total
            self.sink.put(item)

    def _refused(self, err: ControllerError) -> None:
        """Tell the app, which exits with the reason (a revoked or too weak token is not an outage)."""
        super()._refused(err)
        self.sink.put(Connection("refused", self.client.address,
                                 f"the controller at {self.client.address} refused the operator token: "
                                 f"{err.code}: {err.details}"))

    def _lost(self, err: ControllerError, delay: float) -> None:
        super()._lost(err, delay)
        why = "refused the operator token" if isinstance(err, Refused) else "unreachable"
        detail = err.details.rsplit(": ", 1)[-1][:60]  # gRPC's details nest; the last clause says it
        error = f"{why} ({err.code}{': ' + detail if detail else ''})"
        now = self.clock()
        self.sink.put(Connection("lost", self.client.address, error, self.backoff.attempt, now + delay))
        if self._was_connected or self.backoff.attempt == 1:
            self.sink.put(EventEntry(now, "connection", f"lost the controller at {self.client.address}: {error}"))
        self._was_connected = False


class DetectionFeed(_StreamThread):
    """One device's WatchDetections into a bounded buffer the device screen drains."""

    name = "detection-feed"

    def __init__(self, client, device_id: str, maxlen: int = 512, backoff: Backoff | None = None):
        super().__init__(backoff)
        self.client = client
        self.device_id = device_id
        self._frames: deque[FrameView] = deque(maxlen=maxlen)
        self._buffer_lock = threading.Lock()
        self.error = ""

    def drain(self) -> list[FrameView]:
        with self._buffer_lock:
            frames = list(self._frames)
            self._frames.clear()
        return frames

    def _session(self) -> None:
        stream = self._open(lambda: self.client.watch_detections(self.device_id))
        if stream is None:
            return
        self.error = ""
        for frame in stream:
            if self.stopped:
                return
            with self._buffer_lock:
                self._frames.append(frame)

    def _lost(self, err: ControllerError, delay: float) -> None:
        super()._lost(err, delay)
        self.error = f"live detections: {err.code}, retrying"
